"""One endpoint's publishing channel on aio-pika's public API only: the fallback publisher.

Same interface, results and guarantees as the fast publisher (``AmqpSink``), which
takes over aiormq's confirm and return frames and therefore runs only on aiormq versions it
was tested with. This one touches nothing private: every message is one
``Exchange.publish(..., mandatory=True, timeout=...)`` task on a ``publisher_confirms``
channel opened with ``on_return_raises=True``, so aio-pika reports each outcome:

- ``Basic.Ack``: confirmed (or re-routed, when it was published to the alternate exchange);
- :class:`aio_pika.exceptions.PublishError`: returned as unroutable, then re-published to
  the alternate exchange or reported ``RETURNED`` (counted and logged, never silent);
- :class:`aio_pika.exceptions.DeliveryError`: nacked, published again after a back-off;
- ``TimeoutError``: no confirm within ``publish_timeout``; the channel is retired (closed,
  escalating to the connection if even that hangs, as aio-pika#636 can hang forever) and
  every unconfirmed message is published again on the channel aio-pika reopens;
- any other AMQP or socket error: the channel or connection was lost; the message is
  published again once aio-pika has restored the channel (duplicates possible, losses not).

It costs what aio-pika's own pipelined publishing costs (one task, one future, the pamqp
objects and a drained write per message): ``bench/publish_ceiling.py`` measures it at 0.9x of
plain aio-pika's msg/s and many times the fast path's CPU per message, hence the fallback.
As on the fast path, the same ``message_id`` is never in flight twice on the channel, so a
return maps to exactly one message (aio-pika#689 cannot happen), and at most
``max_inflight`` publishes wait for their confirm at once; ``max_nacks`` and dead letters
behave as on the fast path.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Callable
from typing import Final, TypeVar, cast

import aio_pika
import aio_pika.abc
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)

from bridge.amqp.attach import Underlay
from bridge.amqp.frames import check_shortstr, encode_headers
from bridge.amqp.sink_base import DoneCallback, SinkBase
from bridge.pipeline.sink import Publishable, PublishResult


__all__ = ["PublicApiPublisher"]

log = logging.getLogger(__name__)

_EXCHANGE_CACHE_MAX: Final = 4096
# Raised while building or encoding a message: the message itself is at fault, so retrying it
# would fail forever. Everything else is the channel's or the broker's trouble.
_ENCODING_ERRORS: Final = (ValueError, TypeError, OverflowError, struct.error, RecursionError)

M = TypeVar("M", bound=Publishable)


class _Entry:
    """One message on its way: its target, its aio-pika message once built, delivery state."""

    __slots__ = ("amqp", "attempts", "done", "exchange", "msg", "nacks", "seq")

    def __init__(self, msg: Publishable, done: DoneCallback, seq: int) -> None:
        self.msg = msg
        self.done = done
        self.seq = seq  # submission order: lost messages are published again in this order
        self.exchange = msg.exchange
        self.amqp: aio_pika.Message | None = None
        self.attempts = 0
        self.nacks = 0


class PublicApiPublisher(SinkBase[_Entry]):
    """Publishes one endpoint's messages on its own confirm channel, via aio-pika's public API
    (the rest is :class:`~bridge.amqp.sink_base.SinkBase`). Drop-in for ``AmqpSink``."""

    _log = log

    def _init_path(self) -> None:
        # The underlay channel publishes currently go to; None after it was lost or retired.
        self._attached: Underlay | None = None
        # The last underlay lost or retired: never attach to it again (aio-pika may report it
        # open for a while), and count its loss once however many publishes failed on it.
        self._lost_underlay: Underlay | None = None
        self._timed_out: Underlay | None = None  # retired for a confirm timeout
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._seq = 0
        self._lost: list[tuple[_Entry, str]] = []  # lost with their channel, and why
        self._stopped = False  # close() gave up: no more done callbacks
        self._writer_task: asyncio.Task[None] | None = None
        self._publishes: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel (publisher confirms on, returns raised) and start the writer."""
        channel = await self._open_channel(on_return_raises=True)
        channel.close_callbacks.add(self._on_channel_closed)
        await self._attach()
        self._writer_task = asyncio.create_task(
            self._writer(), name=f"amqp-public-writer-{self.endpoint}"
        )

    def submit(self, msg: M, done: Callable[[M, PublishResult], None]) -> None:
        """See :meth:`SinkBase.submit`."""
        if self._closing:
            raise RuntimeError(f"publisher for {self.endpoint!r} is closed")
        _validate(msg)
        self._seq += 1
        self._pending.append(_Entry(msg, cast(DoneCallback, done), self._seq))
        self._outstanding += 1
        self._idle.clear()
        self._wake.set()

    @property
    def inflight(self) -> int:
        """Published, awaiting the broker's confirm."""
        return len(self._by_id)

    @property
    def ready(self) -> bool:
        """The channel is open and attached."""
        ch = self._channel
        return self._attached is not None and ch is not None and not ch.is_closed

    async def close(self, deadline: float = 10.0) -> int:
        """Stop accepting, wait up to ``deadline`` s for outstanding confirms; return how many
        were left unconfirmed (their ``done`` is never called)."""
        await self._drain(deadline)
        self._stopped = True
        tasks = [*self._publishes, *self._background]
        if self._writer_task is not None:
            tasks.append(self._writer_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = self._outstanding
        self._attached = None
        await self._close_channel(left)
        return left

    # -- channel attachment -----------------------------------------------------------------

    async def _attach(self) -> None:
        """Wait until aio-pika has an open channel that is not the one just lost or retired."""
        assert self._attacher is not None
        underlay = await self._attacher.usable(self._lost_underlay)
        self._attached = underlay
        self._exchanges.clear()  # bound to the channel object, but cheap: start afresh

    def _on_channel_closed(self, _sender: object, exc: BaseException | None) -> None:
        # Each close of the underlay channel, before aio-pika restores it.
        if isinstance(exc, ChannelNotFoundEntity):
            self._missing_entity = True
        self._wake.set()  # the writer attaches to the restored channel

    def _channel_lost(self, underlay: Underlay) -> None:
        """Count one loss per underlay channel and stop publishing to it."""
        if underlay is self._lost_underlay:
            return
        self._lost_underlay = underlay
        self._losses += 1
        if self._attached is underlay:
            self._attached = None

    # -- writing ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Hands queued messages to aio-pika, at most ``max_inflight`` at once.

        Never dies while the publisher is open: anything unexpected is logged with its
        traceback and handled like a channel loss (back-off, then attach again).
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "publisher %s: writer failed; reattaching and publishing again", self.endpoint
                )
                if self._attached is not None:
                    self._retire(self._attached)
                else:
                    self._losses += 1  # nothing attached: still back off before the next try
                self._wake.set()

    async def _write_pending(self) -> None:
        self._requeue_lost()
        if self._attached is None or self._attached.is_closed:
            # Even with nothing to publish: ``ready`` turns true again once the channel is back.
            await self._recover()
            await self._attach()
            self._requeue_lost()  # what failed meanwhile goes first, in submission order
        if not self._pending:
            return
        underlay = self._attached
        assert underlay is not None
        pending, by_id = self._pending, self._by_id
        # A publish to a missing exchange closes the channel (404), and aiormq still writes the
        # publishes queued behind it on the channel, after its close: the broker then closes
        # the whole connection (504 CHANNEL_ERROR), every endpoint's channel with it. So a
        # message goes alone, after everything in flight, until the broker answered: after a
        # loss, and to an exchange not yet answered for on this channel.
        limit = self._max_inflight if not self._losses else 1
        answered = self._exchanges
        while pending and len(by_id) < limit:
            if pending[0].exchange not in answered:
                if by_id:
                    break  # the last one in flight wakes the writer
                limit = 1
            e = pending.popleft()
            mid = e.msg.message_id
            if mid in by_id:
                self._blocked.setdefault(mid, []).append(e)
                continue
            try:
                amqp = self._message(e)
            except _ENCODING_ERRORS as exc:  # this message only; the rest go on
                self._reject(e, exc)
                continue
            by_id[mid] = e
            e.attempts += 1
            task = asyncio.create_task(self._publish(underlay, e, amqp))
            self._publishes.add(task)
            task.add_done_callback(self._publishes.discard)

    def _message(self, e: _Entry) -> aio_pika.Message:
        """The aio-pika message, built once; target names checked again, as the caller may have
        changed the message after submit (only the writer can find out)."""
        msg = e.msg
        check_shortstr("exchange", e.exchange)
        check_shortstr("routing key", msg.routing_key)
        if e.amqp is None:
            _validate(msg)
            e.amqp = aio_pika.Message(
                bytes(msg.body),
                headers=dict(msg.headers),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=msg.message_id,
                timestamp=int(msg.timestamp),
            )
        return e.amqp

    def _requeue_lost(self) -> None:
        """Messages lost with their channel go back to the front of the queue, in order."""
        if not self._lost:
            return
        lost, self._lost = self._lost, []
        lost.sort(key=lambda pair: pair[0].seq)
        self._pending.extendleft(reversed([e for e, _ in lost]))
        reasons = Counter(reason for _, reason in lost)
        log.warning(
            "publisher %s lost its channel (%s) with %d unconfirmed; re-publishing",
            self.endpoint,
            ", ".join(sorted(reasons)),
            len(lost),
        )
        for reason, count in reasons.items():
            self._hooks.on_failure(reason, count)
        self._hooks.on_redelivered(len(lost))

    async def _exchange(self, name: str) -> tuple[aio_pika.abc.AbstractExchange, bool]:
        """The exchange object, and whether the broker already answered a publish to it on
        this channel (only those are kept: see :meth:`_write_pending`)."""
        exchange = self._exchanges.get(name)
        if exchange is not None:
            return exchange, True
        assert self._channel is not None
        # ensure=False: no broker round trip (we declared it; a missing one closes the
        # channel with 404 on publish, and the topology is declared again).
        return await self._channel.get_exchange(name, ensure=False), False

    def _answered(self, name: str, exchange: aio_pika.abc.AbstractExchange) -> None:
        """The broker answered a publish to ``name``: it exists, publish to it freely."""
        if len(self._exchanges) >= _EXCHANGE_CACHE_MAX:  # unbounded names: stay bounded
            self._exchanges.clear()
        self._exchanges[name] = exchange

    # -- one publish ------------------------------------------------------------------------

    async def _publish(self, underlay: Underlay, e: _Entry, amqp: aio_pika.Message) -> None:
        """Publish one message and settle it from what aio-pika reports."""
        exchange: aio_pika.abc.AbstractExchange | None = None
        known = False
        try:
            exchange, known = await self._exchange(e.exchange)
            await exchange.publish(
                amqp, e.msg.routing_key, mandatory=True, timeout=self._publish_timeout
            )
        except PublishError as exc:  # returned as unroutable (before its ack)
            self._losses = 0
            if not known and exchange is not None:
                self._answered(e.exchange, exchange)
            frame = exc.frame
            code = getattr(frame, "reply_code", 0) or 0
            text = getattr(frame, "reply_text", "") or ""
            self._release(e)
            self._unroutable(e, code, text)
        except DeliveryError:  # nacked
            self._losses = 0
            if not known and exchange is not None:
                self._answered(e.exchange, exchange)
            self._release(e)
            self._hooks.on_failure("nack", 1)
            e.nacks += 1
            if self._refused(e):
                self._finish(e, PublishResult.REFUSED)
            else:
                self._retry_later(e)
        except TimeoutError:
            self._release(e)
            self._lost.append((e, "timeout"))
            self._retire(underlay, timed_out=True)
            self._wake.set()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopped or (task is not None and task.cancelling()):
                raise  # close() gave up on it
            # aiormq cancels pending confirmations when their channel closes.
            self._lost_with(underlay, e, None)
        except _ENCODING_ERRORS as exc:  # aio-pika or pamqp refused what we did not foresee
            self._release(e)
            self._reject(e, exc)
        except Exception as exc:  # channel or connection lost (AMQPError, OSError, ...)
            if not isinstance(exc, AMQPError | OSError | ChannelInvalidStateError):
                log.error(
                    "publisher %s: publish failed unexpectedly (%s: %s); publishing again",
                    self.endpoint,
                    type(exc).__name__,
                    exc,
                )
            self._lost_with(underlay, e, exc)
        else:
            self._losses = 0  # the channel works: the next loss starts the back-off over
            if not known:
                self._answered(e.exchange, exchange)
            self._release(e)
            rerouted = e.exchange != e.msg.exchange
            self._finish(e, PublishResult.ALTERNATE if rerouted else PublishResult.CONFIRMED)

    def _lost_with(self, underlay: Underlay, e: _Entry, exc: BaseException | None) -> None:
        if isinstance(exc, ChannelNotFoundEntity):
            self._missing_entity = True
        self._release(e)
        reason = "timeout" if underlay is self._timed_out else "connection"
        self._lost.append((e, reason))
        channel = self._channel
        if underlay.is_closed or channel is None or channel.is_closed:
            self._channel_lost(underlay)
        else:  # the channel looks open yet failed: never publish to it again
            self._retire(underlay)
        self._wake.set()

    def _release(self, e: _Entry) -> None:
        """``e`` is no longer in flight: the next message with its id may go."""
        mid = e.msg.message_id
        if self._by_id.get(mid) is e:
            del self._by_id[mid]
        blocked = self._blocked.pop(mid, None)
        if blocked:
            self._pending.extendleft(reversed(blocked))
        if self._pending or self._lost:
            self._wake.set()

    def _finish(self, e: _Entry, result: PublishResult) -> None:
        if not self._stopped:  # after close() gave up, nobody waits for a result any more
            super()._finish(e, result)

    # -- timeouts ---------------------------------------------------------------------------

    def _retire(self, underlay: Underlay, *, timed_out: bool = False) -> None:
        """Stop publishing to the channel and close it, escalating to the connection if even
        that hangs, so a stuck broker or a black-holed link never hangs the endpoint (a
        confirm overdue by ``publish_timeout``, or a failure on a channel that looks open).
        aio-pika then opens a new channel."""
        if underlay is self._lost_underlay:
            return
        if timed_out:
            log.warning(
                "publisher %s: no confirm within %.1f s; reopening the channel",
                self.endpoint,
                self._publish_timeout,
            )
            self._timed_out = underlay
        self._channel_lost(underlay)
        task = asyncio.create_task(self._force_close(underlay))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _validate(msg: Publishable) -> None:
    """Refuse at submit what AMQP cannot carry (the same checks as the fast publisher)."""
    check_shortstr("exchange", msg.exchange)
    check_shortstr("routing key", msg.routing_key)
    check_shortstr("message_id", msg.message_id)
    if not isinstance(msg.body, bytes | bytearray | memoryview):
        raise TypeError(f"message body is {type(msg.body).__name__}, not bytes")
    for name in msg.headers:
        check_shortstr("header name", name)
    try:
        encode_headers(msg.headers)
    except (RecursionError, OverflowError) as exc:  # a header value nested or sized absurdly
        raise ValueError(f"headers cannot be encoded: {type(exc).__name__}") from None
