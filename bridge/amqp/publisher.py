"""The RabbitMQ :class:`~bridge.pipeline.sink.Sink`: one endpoint's confirmed, pipelined,
re-publishing publishing channel that never loses a message.

aio-pika keeps the connection, the channel and their recovery (a RobustChannel per endpoint);
publishing bypasses ``Exchange.publish``: each batch of messages is pre-encoded
(:mod:`bridge.amqp.frames`) and handed to the connection writer as one write, and the
channel's ``basic.ack`` / ``basic.nack`` / ``basic.return`` frames are taken over from aiormq
so that confirms are tracked here by delivery tag, with ``multiple=True`` acks settling a whole
prefix at once. No task, future or pamqp object is created per message.

Guarantees, each proven by the integration tests:

- a message is reported done only after the broker confirmed it (or returned it as
  unroutable, which is reported, counted and logged, never silent);
- channel or connection loss, a confirm timeout and a nack all re-queue the message, which is
  published again once the channel is back (duplicates possible, losses not);
- the same ``message_id`` is never in flight twice on the channel, so a return always maps to
  exactly one message (and aio-pika#689 cannot happen here);
- with ``max_nacks`` set, a message nacked that many times is reported ``REFUSED`` (the
  caller dead-letters it) instead of being retried forever; a dead letter
  (:func:`~bridge.pipeline.sink.retries_until_routed`) is retried however often it is nacked
  or returned unroutable, and never re-routed to the alternate exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

import aiormq
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelNotFoundEntity
from pamqp import commands as spec
from pamqp.header import ContentHeader

from bridge.amqp.frames import SHORTSTR_SAFE_CHARS, FrameEncoder, check_shortstr, encode_headers
from bridge.amqp.sink_base import (
    DoneCallback,
    NullHooks,
    PublisherHooks,
    SinkBase,
)
from bridge.pipeline.sink import Publishable, PublishResult


__all__ = [
    "AmqpSink",
    "PublishResult",
    "Publishable",
    "PublisherHooks",
    "NullHooks",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Publishable)


class _Entry:
    """One message on its way: its encoded properties, target and delivery state."""

    __slots__ = (
        "attempts",
        "done",
        "exchange",
        "msg",
        "nacks",
        "props",
        "returned",
        "sent_at",
        "settled",
    )

    def __init__(self, msg: Publishable, done: DoneCallback, props: bytes) -> None:
        self.msg = msg
        self.done = done
        self.props = props
        self.exchange = msg.exchange
        self.returned: tuple[int, str] | None = None
        self.settled = False
        self.attempts = 0
        self.nacks = 0
        self.sent_at = 0.0


class AmqpSink(SinkBase[_Entry]):
    """Publishes one endpoint's messages on its own confirm channel (pre-encoded frames, its
    own confirm tracking; the rest is :class:`~bridge.amqp.sink_base.SinkBase`)."""

    _log = log

    def _init_path(self) -> None:
        self._ch: aiormq.Channel | None = None  # the attached underlay, hooks installed
        self._encoder: FrameEncoder | None = None
        # Delivery tag of ``_window[0]``, or the next tag to use while the window is empty.
        self._first_tag = 1
        self._window: deque[_Entry] = deque()  # in flight, in delivery-tag order
        # A channel given up on after a confirm timeout: never attach to it again, even while
        # aio-pika still reports it open (its late confirms would carry stale delivery tags).
        self._retired: aiormq.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel (publisher confirms on) and start the writer."""
        await self._open_channel(on_return_raises=False)
        await self._attach()
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"amqp-writer-{self.endpoint}"),
            asyncio.create_task(self._watchdog(), name=f"amqp-watchdog-{self.endpoint}"),
        ]

    def submit(self, msg: M, done: Callable[[M, PublishResult], None]) -> None:
        """See :meth:`SinkBase.submit`: the properties are encoded here, once."""
        if self._closing:
            raise RuntimeError(f"publisher for {self.endpoint!r} is closed")
        props = _properties(msg)
        exchange, key = msg.exchange, msg.routing_key
        if not (
            type(exchange) is str
            and type(key) is str
            and len(exchange) <= SHORTSTR_SAFE_CHARS
            and len(key) <= SHORTSTR_SAFE_CHARS
        ):
            check_shortstr("exchange", exchange)
            check_shortstr("routing key", key)
        if not isinstance(msg.body, bytes | bytearray | memoryview):
            raise TypeError(f"message body is {type(msg.body).__name__}, not bytes")
        self._pending.append(_Entry(msg, cast(DoneCallback, done), props))
        self._outstanding += 1
        self._idle.clear()
        self._wake.set()

    @property
    def inflight(self) -> int:
        """Published, awaiting the broker's confirm."""
        return len(self._window)

    @property
    def ready(self) -> bool:
        """The channel is open and attached."""
        return self._ch is not None and not self._ch.is_closed

    async def close(self, deadline: float = 10.0) -> int:
        """Stop accepting, wait up to ``deadline`` s for outstanding confirms; return how many
        were left unconfirmed (their ``done`` is never called)."""
        await self._drain(deadline)
        left = self._outstanding
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._ch = None  # late confirms of the closing channel are ignored
        await self._close_channel(left)
        return left

    # -- channel attachment -----------------------------------------------------------------

    async def _attach(self) -> aiormq.Channel:
        """Wait until aio-pika has an open underlay channel and take over its confirm frames."""
        assert self._attacher is not None
        ch = cast(aiormq.Channel, await self._attacher.usable(self._retired))
        self._ch = ch
        self._first_tag = 1  # confirm.select on a fresh channel numbers from 1
        self._encoder = FrameEncoder(ch.number, ch.connection.connection_tune.frame_max)
        # aiormq's reader awaits these per frame; instance attributes take precedence.
        setattr(ch, "_on_confirm_frame", partial(self._on_confirm_frame, ch))  # noqa: B010
        setattr(ch, "_on_return_frame", partial(self._on_return_frame, ch))  # noqa: B010
        ch.closing.add_done_callback(partial(self._on_channel_closed, ch))
        return ch

    def _on_channel_closed(self, ch: aiormq.Channel, fut: asyncio.Future[Any]) -> None:
        if ch is not self._ch:
            return
        if not fut.cancelled() and isinstance(fut.exception(), ChannelNotFoundEntity):
            self._missing_entity = True
        self._detach("connection")

    def _detach(self, reason: str) -> None:
        """Every unconfirmed message of the lost channel goes back to the front of the queue."""
        self._ch = None
        self._losses += 1
        lost = [e for e in self._window if not e.settled]
        self._window.clear()
        self._by_id.clear()
        for e in lost:
            e.returned = None
        blocked = [e for entries in self._blocked.values() for e in entries]
        self._blocked.clear()
        self._pending.extendleft(reversed(lost + blocked))
        if lost:
            log.warning(
                "publisher %s lost its channel (%s) with %d unconfirmed; re-publishing",
                self.endpoint,
                reason,
                len(lost),
            )
            self._hooks.on_failure(reason, len(lost))
            self._hooks.on_redelivered(len(lost))
        self._wake.set()

    # -- writing ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Moves queued messages into the in-flight window, one coalesced write per batch.

        Never dies while the publisher is open: a message that cannot be encoded is settled
        as unpublishable on its own (see :meth:`_encode_batch`); anything else unexpected is
        logged with its traceback and handled like a channel loss (the channel is retired,
        its unconfirmed messages are queued again and the channel reopened after the loss
        back-off), so the endpoint shows not ready meanwhile instead of hanging silently.
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
                    "publisher %s: writer failed; reopening the channel and publishing again",
                    self.endpoint,
                )
                await self._restart_channel("writer_error")

    async def _write_pending(self) -> None:
        ch = self._ch
        if ch is None or ch.is_closed:
            # Even with nothing to publish: ``ready`` turns true again once the channel is back.
            await self._recover()
            ch = await self._attach()
        if not self._pending:
            return
        room = self._max_inflight - len(self._window)
        if room <= 0:
            return  # an ack frees room and wakes us
        payload = self._encode_batch(ch, room)
        if payload:
            await self._write(ch, payload)
        if self._pending and len(self._window) < self._max_inflight:
            self._wake.set()

    async def _restart_channel(self, reason: str) -> None:
        ch = self._ch
        if ch is not None:
            self._retired = ch
            self._detach(reason)
            await self._force_close(ch)
        else:
            self._losses += 1  # nothing attached: still back off before the next attempt
        self._wake.set()

    def _encode_batch(self, ch: aiormq.Channel, room: int) -> bytes:
        assert self._encoder is not None
        method = self._encoder.method
        header = self._encoder.header
        body_frames = self._encoder.body
        pending, window, by_id = self._pending, self._window, self._by_id
        now = self._loop.time()
        parts: list[bytes] = []
        while room and pending:
            e = pending.popleft()
            msg = e.msg
            try:
                mid = msg.message_id
                if mid in by_id:
                    self._blocked.setdefault(mid, []).append(e)
                    continue
                frames = [method(e.exchange, msg.routing_key), header(e.props)]
                body_frames(msg.body, frames)
            except Exception as exc:  # this message only; the rest of the batch goes on
                self._reject(e, exc)
                continue
            by_id[mid] = e
            window.append(e)  # its delivery tag is _first_tag + its index in the window
            e.settled = False
            e.returned = None
            e.sent_at = now
            e.attempts += 1
            room -= 1
            parts.extend(frames)
        return b"".join(parts)

    async def _write(self, ch: aiormq.Channel, payload: bytes) -> None:
        frame = ChannelFrame(payload=payload, should_close=False)
        queue = ch.write_queue
        try:
            queue.put_nowait(frame)
            return
        except asyncio.QueueFull:
            pass
        # The writer is behind; wait for room, but give up if the channel goes away meanwhile
        # (the close callback has re-queued this batch, and the old queue may never drain).
        put = asyncio.ensure_future(queue.put(frame))
        await asyncio.wait((put, ch.closing), return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await put

    # -- confirms ---------------------------------------------------------------------------

    async def _on_confirm_frame(self, ch: aiormq.Channel, frame: spec.Basic.Ack) -> None:
        if ch is not self._ch:
            return
        nack = isinstance(frame, spec.Basic.Nack)
        self._losses = 0  # the channel works: the next loss starts the back-off over
        tag = frame.delivery_tag
        window = self._window
        index = tag - self._first_tag
        if index < 0 or index >= len(window):
            log.error("publisher %s: confirm for unknown delivery tag %d", self.endpoint, tag)
            return
        if frame.multiple:
            settle = self._settle
            for _ in range(index + 1):
                e = window.popleft()
                if not e.settled:
                    settle(e, nack)
            self._first_tag = tag + 1
        else:
            e = window[index]
            if not e.settled:
                self._settle(e, nack)
        while window and window[0].settled:
            window.popleft()
            self._first_tag += 1
        if self._pending:
            self._wake.set()

    def _settle(self, e: _Entry, nack: bool) -> None:
        e.settled = True
        mid = e.msg.message_id
        del self._by_id[mid]
        blocked = self._blocked.pop(mid, None)
        if blocked:
            self._pending.extendleft(reversed(blocked))
            self._wake.set()
        if nack:
            self._hooks.on_failure("nack", 1)
            e.nacks += 1
            if self._refused(e):
                self._finish(e, PublishResult.REFUSED)
            else:
                self._retry_later(e)
            return
        if e.returned is not None:
            self._unroutable(e, *e.returned)
            return
        rerouted = e.exchange != e.msg.exchange
        self._finish(e, PublishResult.ALTERNATE if rerouted else PublishResult.CONFIRMED)

    # -- returns ----------------------------------------------------------------------------

    async def _on_return_frame(self, ch: aiormq.Channel, frame: spec.Basic.Return) -> None:
        # The returned content follows on the channel; read it off as aiormq would.
        header = await ch._get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} after basic.return")
        await ch._read_content(frame, header)
        mid = header.properties.message_id
        e = self._by_id.get(mid) if ch is self._ch and mid is not None else None
        if e is None:
            log.error("publisher %s: return of unknown message_id %r", self.endpoint, mid)
            return
        # The broker sends basic.return before the basic.ack of the same message.
        e.returned = (frame.reply_code or 0, frame.reply_text or "")

    # -- timeouts ---------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """A confirm overdue by ``publish_timeout`` retires the channel at once (its messages go
        back to the queue) and closes it, escalating to the connection if even that hangs, so a
        stuck broker or a black-holed link never hangs the endpoint (aio-pika#636)."""
        interval = max(0.05, self._publish_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._check_overdue()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watchdog must outlive anything it runs into
                log.exception("publisher %s: confirm watchdog failed; going on", self.endpoint)

    async def _check_overdue(self) -> None:
        ch, window = self._ch, self._window
        if ch is None or ch.is_closed or not window:
            return
        if self._loop.time() - window[0].sent_at < self._publish_timeout:
            return
        log.warning(
            "publisher %s: no confirm within %.1f s; reopening the channel",
            self.endpoint,
            self._publish_timeout,
        )
        self._retired = ch
        self._detach("timeout")
        await self._force_close(ch)


def _properties(msg: Publishable) -> bytes:
    """Encode the content-header properties once, at submit, so bad input fails the caller."""
    try:
        headers = encode_headers(msg.headers)
        return FrameEncoder.properties(len(msg.body), headers, msg.message_id, msg.timestamp)
    except (RecursionError, OverflowError) as exc:  # a header value nested or sized absurdly
        raise ValueError(f"headers cannot be encoded: {type(exc).__name__}") from None
    except (ValueError, TypeError, AttributeError):
        # The encoders only know that some string is too long or no string: name which one
        # (checked here, not before encoding, to keep the per-message path short).
        check_shortstr("message_id", msg.message_id)
        for name in msg.headers:
            check_shortstr("header name", name)
        raise
