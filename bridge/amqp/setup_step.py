"""One step of setting up the broker side (declare an exchange or a queue, open a sink's
channel): bounded, tried again after aio-pika reconnected, and failing with a clear error.

At start the connection may drop in the middle of the topology (a broker restart, a load
balancer cutting idle links). aio-pika reconnects by itself, but the declaration that was
under way fails with whatever the socket or the closing channel reported (a reset, a
``RuntimeError`` naming the closed connection), or never answers on a silent link. Each step
therefore runs under a time limit; after a connection error it waits (bounded) for the
reconnect and runs again, a few times. A refusal by the broker (``PRECONDITION_FAILED`` for a
queue that exists with other arguments, ``ACCESS_REFUSED``, ``NOT_FOUND``) is what it will say
every time: it is raised at once as :class:`TopologyError`, with the broker's words, which
name the entity and the argument in conflict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aio_pika.abc
from aiormq.exceptions import ChannelClosed


__all__ = ["TopologyError", "run_step"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries of one step before it fails (the first one and the ones after a reconnect).
STEP_ATTEMPTS: Final = 3
#: Longest wait for aio-pika's reconnect between two tries.
RECONNECT_WITHIN: Final = 30.0
# Pause after a reconnect before the next try, doubling: a link that drops again at once is
# not hammered.
_RETRY_PAUSE_FIRST: Final = 0.1

# What a lost connection raises while a step is under way: socket and AMQP connection errors
# (OSError), a closed aiormq connection or channel (RuntimeError, ChannelInvalidStateError),
# and a step that got no answer in time (TimeoutError).
_CONNECTION_TROUBLE: Final = (OSError, RuntimeError, TimeoutError)


class TopologyError(Exception):
    """A setup step failed: the broker refused it, or the connection kept failing under it."""


def _broker_words(exc: ChannelClosed) -> str:
    """The broker's reply text (``PRECONDITION_FAILED - inequivalent arg 'x-max-length' for
    queue ...``), or the exception's text if it carries none."""
    text = str(exc).strip()
    return text or type(exc).__name__


async def run_step(
    connection: aio_pika.abc.AbstractRobustConnection,
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    within: float,
    cleanup: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Run ``step`` (each try within ``within`` s), again after a reconnect on connection
    trouble; raise :class:`TopologyError` naming ``what`` when the broker refuses it or the
    connection failed :data:`STEP_ATTEMPTS` times. ``cleanup`` runs after a failed try (e.g.
    to close what the try half opened)."""
    pause = _RETRY_PAUSE_FIRST
    for attempt in range(1, STEP_ATTEMPTS + 1):
        try:
            async with asyncio.timeout(within):
                return await step()
        except ChannelClosed as exc:
            if cleanup is not None:
                await cleanup()
            raise TopologyError(f"{what}: refused by the broker: {_broker_words(exc)}") from None
        except _CONNECTION_TROUBLE as exc:
            if cleanup is not None:
                await cleanup()
            trouble = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt == STEP_ATTEMPTS:
                raise TopologyError(
                    f"{what}: failed {attempt} times, the connection to the broker failing "
                    f"under it (last: {trouble})"
                ) from None
            log.warning(
                "AMQP setup: %s failed (%s); trying again once connected (try %d of %d)",
                what,
                trouble,
                attempt + 1,
                STEP_ATTEMPTS,
            )
        # Back-off first: aio-pika notes the loss (clears ``connected``) in a callback of its
        # own, which may not have run yet when the step failed.
        await asyncio.sleep(pause)
        pause *= 2
        try:
            async with asyncio.timeout(RECONNECT_WITHIN):
                await connection.ready()
        except TimeoutError:
            raise TopologyError(
                f"{what}: the connection to the broker was lost and not back within "
                f"{RECONNECT_WITHIN:.0f} s"
            ) from None
    raise AssertionError("unreachable")  # the loop returns or raises
