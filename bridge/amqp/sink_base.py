"""What both RabbitMQ sinks share: their arguments and bookkeeping, and how they back off,
give up, re-route and close a channel, so the fast one (``AmqpSink``) and the public-API one
(``PublicApiPublisher``) behave alike and differ only in how a message reaches the broker.

Nothing here runs per message on the fast path except ``_finish`` (once per settled message,
a plain method as before); the rest runs on nacks, returns, losses and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

import aio_pika.abc
import aiormq.abc

from bridge.amqp.attach import ChannelAttacher
from bridge.amqp.returns import ReturnAction, on_returned
from bridge.pipeline.sink import Publishable, PublishResult, retries_until_routed


__all__ = ["NullHooks", "PublisherHooks", "SinkBase"]

# A nacked message is retried after this delay, doubling per attempt up to the cap, so a
# broker that refuses (e.g. a full queue with reject-publish) is not hammered.
_NACK_BACKOFF_FIRST: Final = 0.05
_NACK_BACKOFF_MAX: Final = 2.0
# After losing the channel N times without a broker answer in between, wait
# FIRST * 2**(N-1) (capped) before publishing again.
_LOSS_BACKOFF_FIRST: Final = 0.05
_LOSS_BACKOFF_MAX: Final = 5.0
#: Longest wait for a polite channel/connection close at shutdown.
CLOSE_HANDSHAKE: Final = 5.0

M = TypeVar("M", bound=Publishable)
DoneCallback = Callable[[Any, PublishResult], None]


class PublisherHooks(Protocol):
    """Counters the daemon wires to Prometheus (``publish_failures_total`` and friends)."""

    def on_failure(self, reason: str, count: int) -> None:
        """``count`` publish attempts failed for ``reason`` (nack, timeout, connection)."""

    def on_unroutable(self, action: str) -> None:
        """A message came back unroutable; ``action`` is ``alternate`` or ``logged``."""

    def on_redelivered(self, count: int) -> None:
        """``count`` messages will be published again after their confirm was lost."""


class NullHooks:
    """Hooks that count nothing."""

    def on_failure(self, reason: str, count: int) -> None:
        pass

    def on_unroutable(self, action: str) -> None:
        pass

    def on_redelivered(self, count: int) -> None:
        pass


class Entry(Protocol):
    """What the shared code reads and writes on a sink's message entry."""

    msg: Publishable
    done: DoneCallback
    exchange: str
    attempts: int
    nacks: int


E = TypeVar("E", bound=Entry)


class SinkBase(Generic[E]):
    """The state and the decisions both sinks share; each sink adds its publish path.

    ``submit(msg, done)`` never blocks and never raises for transient trouble; ``done(msg,
    result)`` is called exactly once, from the event loop, when the broker settled the message.
    ``publish(msg)`` is the same as a future.
    """

    # Each sink logs under its own module's name, as before they shared this code.
    _log: ClassVar[logging.Logger]

    def __init__(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        endpoint: str,
        *,
        hooks: PublisherHooks | None = None,
        alternate_exchange: str | None = None,
        max_inflight: int = 512,
        publish_timeout: float = 10.0,
        redeclare: Callable[[], Awaitable[None]] | None = None,
        max_nacks: int | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be positive")
        if max_nacks is not None and max_nacks < 1:
            raise ValueError("max_nacks must be positive")
        self.endpoint = endpoint
        self._max_nacks = max_nacks
        self._connection = connection
        self._hooks: PublisherHooks = hooks or NullHooks()
        self._alternate = alternate_exchange
        self._max_inflight = max_inflight
        self._publish_timeout = publish_timeout
        self._loop = asyncio.get_running_loop()

        self._channel: aio_pika.abc.AbstractRobustChannel | None = None  # opened by start()
        self._attacher: ChannelAttacher | None = None
        self._pending: deque[E] = deque()  # accepted, not yet published
        self._by_id: dict[str, E] = {}  # in flight, by message_id
        self._blocked: dict[str, list[E]] = {}  # waiting for the same id to settle
        self._outstanding = 0  # accepted, not yet done
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._retries: set[asyncio.TimerHandle] = set()  # nacked or returned, backing off
        # Channel losses since the last broker answer: each re-attach waits longer, so a broker
        # that closes the channel on every publish (an exchange deleted under us) is no hot loop.
        self._losses = 0
        # The broker closed the channel with 404 NOT_FOUND: the topology must be declared again.
        self._redeclare = redeclare
        self._missing_entity = False
        self._closing = False
        self._init_path()

    def _init_path(self) -> None:
        """The sink's own state for its publish path (called at the end of ``__init__``)."""

    # -- public API -------------------------------------------------------------------------

    def submit(self, msg: M, done: Callable[[M, PublishResult], None]) -> None:
        """Queue ``msg``; ``done(msg, result)`` runs once the broker settled it.

        Raises ``ValueError``/``TypeError`` at once for a message that can never be encoded
        (exchange, routing key, header name or message_id over 255 bytes, a body that is not
        bytes, an unsupported header value), so one bad message never reaches the writer.
        """
        raise NotImplementedError

    def publish(self, msg: M) -> asyncio.Future[PublishResult]:
        """Queue ``msg``; the future resolves with the result once the broker settled it."""
        fut: asyncio.Future[PublishResult] = self._loop.create_future()
        self.submit(msg, partial(_resolve, fut))
        return fut

    @property
    def outstanding(self) -> int:
        """Accepted and not yet done (queued, in flight, or waiting to be retried)."""
        return self._outstanding

    async def wait_idle(self) -> None:
        """Return once every accepted message is done."""
        await self._idle.wait()

    async def _open_channel(self, *, on_return_raises: bool) -> aio_pika.abc.AbstractRobustChannel:
        """Open the endpoint's confirm channel and watch its reopening (see ``attach``)."""
        channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=on_return_raises
        )
        self._channel = channel
        self._attacher = ChannelAttacher(channel, self.endpoint, self._wake.set)
        return channel

    async def _close_channel(self, left: int) -> None:
        """At close, once the sink's tasks are gone: say what is left, close the channel."""
        if left:
            self._log.warning(
                "closing publisher %s with %d messages unconfirmed", self.endpoint, left
            )
        if self._attacher is not None:
            self._attacher.close()
        channel = self._channel
        if channel is not None and not channel.is_closed:
            # aio-pika#668: restore may race the close during shutdown; nothing to keep.
            # Bounded: on a black-holed link the close handshake never completes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CLOSE_HANDSHAKE)

    async def _drain(self, deadline: float) -> None:
        """At close: stop accepting, wait up to ``deadline`` s for outstanding confirms, and
        drop the back-off timers (what they hold is left unconfirmed)."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()

    # -- settling ---------------------------------------------------------------------------

    def _finish(self, e: E, result: PublishResult) -> None:
        self._outstanding -= 1
        if not self._outstanding:
            self._idle.set()
        try:
            e.done(e.msg, result)
        except Exception:
            self._log.exception("publisher %s: done callback failed", self.endpoint)

    def _refused(self, e: E) -> bool:
        """Nacked ``max_nacks`` times: give it back to the caller instead of retrying."""
        if self._max_nacks is None or e.nacks < self._max_nacks or retries_until_routed(e.msg):
            return False
        self._log.warning(
            "publisher %s: message nacked %d times; not retried: message_id=%.300s exchange=%.300s",
            self.endpoint,
            e.nacks,
            e.msg.message_id,
            e.exchange,
        )
        return True

    def _reject(self, e: E, exc: BaseException) -> None:
        """``e`` can never be encoded: settle it as unpublishable, saying why."""
        try:
            mid: object = e.msg.message_id
        except Exception:
            mid = "?"
        self._log.error(
            "publisher %s: message cannot be encoded and is not published: message_id=%.300s "
            "exchange=%.300s error=%s: %.300s",
            self.endpoint,
            mid,
            e.exchange,
            type(exc).__name__,
            exc,
        )
        self._finish(e, PublishResult.UNPUBLISHABLE)

    def _retry_later(self, e: E) -> None:
        """Publish ``e`` again after the nack back-off (doubling with its attempts)."""
        delay = min(_NACK_BACKOFF_MAX, _NACK_BACKOFF_FIRST * 2 ** max(0, e.attempts - 1))
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            assert handle is not None
            self._retries.discard(handle)
            self._pending.appendleft(e)
            self._wake.set()

        handle = self._loop.call_later(delay, requeue)
        self._retries.add(handle)

    def _unroutable(self, e: E, code: int, text: str) -> None:
        """The broker returned ``e``: retry a dead letter, re-route once, or settle it."""
        action = on_returned(
            e.msg,
            exchange=e.exchange,
            alternate=self._alternate,
            code=code,
            text=text,
            endpoint=self.endpoint,
            hooks=self._hooks,
            log=self._log,
        )
        if action is ReturnAction.RETRY:
            self._retry_later(e)
        elif action is ReturnAction.ALTERNATE:
            assert self._alternate is not None
            e.exchange = self._alternate
            self._pending.appendleft(e)
            self._wake.set()
        else:
            self._finish(e, PublishResult.RETURNED)

    # -- losses -----------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Before re-attaching after a loss: back off, and declare the topology again if the
        broker said an exchange is missing (someone deleted it; we declared it at start)."""
        if self._losses:
            delay = min(_LOSS_BACKOFF_MAX, _LOSS_BACKOFF_FIRST * 2 ** (self._losses - 1))
            await asyncio.sleep(delay)  # back-off, not synchronisation
        if self._missing_entity and self._redeclare is not None:
            self._log.warning(
                "publisher %s: an exchange is missing; declaring it again", self.endpoint
            )
            try:
                # Waits (bounded) for the connection if the broker closed it meanwhile.
                await self._redeclare()
                self._missing_entity = False
            except Exception as exc:  # tried again after the next loss's longer back-off
                self._log.error(
                    "publisher %s: declaring the topology failed: %s", self.endpoint, exc
                )

    async def _force_close(self, underlay: aiormq.abc.AbstractChannel) -> None:
        """Close a channel given up on, escalating to the connection if even that hangs, so a
        stuck broker or a black-holed link never hangs the endpoint (aio-pika#636)."""
        try:
            await asyncio.wait_for(underlay.close(), self._publish_timeout)
            return
        except Exception:  # whatever went wrong, the channel is not closing: escalate
            self._log.warning(
                "publisher %s: channel close hung; closing the connection", self.endpoint
            )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                underlay.connection.close(ConnectionError("publish confirm timeout")),
                self._publish_timeout,
            )


def _resolve(fut: asyncio.Future[PublishResult], _msg: Any, result: PublishResult) -> None:
    if not fut.done():
        fut.set_result(result)
