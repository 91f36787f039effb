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
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, Protocol, TypeVar, cast

import aio_pika.abc
import aiormq
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelNotFoundEntity
from pamqp import commands as spec
from pamqp.header import ContentHeader

from bridge.amqp.attach import ChannelAttacher
from bridge.amqp.frames import SHORTSTR_SAFE_CHARS, FrameEncoder, check_shortstr, encode_headers
from bridge.amqp.returns import ReturnAction, on_returned
from bridge.pipeline.sink import Publishable, PublishResult, retries_until_routed


__all__ = [
    "AmqpSink",
    "PublishResult",
    "Publishable",
    "PublisherHooks",
    "NullHooks",
]

log = logging.getLogger(__name__)

# A nacked message is retried after this delay, doubling per attempt up to the cap, so a
# broker that refuses (e.g. a full queue with reject-publish) is not hammered.
_NACK_BACKOFF_FIRST: Final = 0.05
_NACK_BACKOFF_MAX: Final = 2.0
# After losing the channel N times without a confirm in between, wait FIRST * 2**(N-1) (capped)
# before publishing again.
_LOSS_BACKOFF_FIRST: Final = 0.05
_LOSS_BACKOFF_MAX: Final = 5.0
# Longest wait for a polite channel/connection close at shutdown.
_CLOSE_HANDSHAKE: Final = 5.0


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


M = TypeVar("M", bound=Publishable)
DoneCallback = Callable[[Any, PublishResult], None]


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


class AmqpSink:
    """Publishes one endpoint's messages on its own confirm channel.

    ``submit(msg, done)`` never blocks and never raises for transient trouble; ``done(msg,
    result)`` is called exactly once, from the event loop, when the broker settled the message.
    ``publish(msg)`` is the same as a future.
    """

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

        self._robust: aio_pika.abc.AbstractRobustChannel | None = None
        self._attacher: ChannelAttacher | None = None
        self._ch: aiormq.Channel | None = None  # the attached underlay, hooks installed
        self._encoder: FrameEncoder | None = None
        # Delivery tag of ``_window[0]``, or the next tag to use while the window is empty.
        self._first_tag = 1
        self._window: deque[_Entry] = deque()  # in flight, in delivery-tag order
        self._by_id: dict[str, _Entry] = {}  # in flight, by message_id
        self._blocked: dict[str, list[_Entry]] = {}  # waiting for the same id to settle
        self._pending: deque[_Entry] = deque()  # accepted, not yet written
        self._delayed = 0  # nacked, waiting for their back-off
        self._outstanding = 0  # accepted, not yet done
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        # A channel given up on after a confirm timeout: never attach to it again, even while
        # aio-pika still reports it open (its late confirms would carry stale delivery tags).
        self._retired: aiormq.Channel | None = None
        # Channel losses since the last confirm: each re-attach waits longer, so a broker that
        # closes the channel on every publish (an exchange deleted under us) is no hot loop.
        self._losses = 0
        # The broker closed the channel with 404 NOT_FOUND: the topology must be declared again.
        self._redeclare = redeclare
        self._missing_entity = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel (publisher confirms on) and start the writer."""
        self._robust = await self._connection.channel(
            publisher_confirms=True, on_return_raises=False
        )
        self._attacher = ChannelAttacher(self._robust, self.endpoint, self._wake.set)
        await self._attach()
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"amqp-writer-{self.endpoint}"),
            asyncio.create_task(self._watchdog(), name=f"amqp-watchdog-{self.endpoint}"),
        ]

    def submit(self, msg: M, done: Callable[[M, PublishResult], None]) -> None:
        """Queue ``msg``; ``done(msg, result)`` runs once the broker settled it.

        Raises ``ValueError``/``TypeError`` at once for a message that can never be encoded
        (exchange, routing key, header name or message_id over 255 bytes, a body that is not
        bytes, an unsupported header value), so one bad message never reaches the writer.
        """
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

    def publish(self, msg: M) -> asyncio.Future[PublishResult]:
        """Queue ``msg``; the future resolves with the result once the broker settled it."""
        fut: asyncio.Future[PublishResult] = self._loop.create_future()
        self.submit(msg, partial(_resolve, fut))
        return fut

    @property
    def inflight(self) -> int:
        """Published, awaiting the broker's confirm."""
        return len(self._window)

    @property
    def outstanding(self) -> int:
        """Accepted and not yet done (queued, in flight, or waiting to be retried)."""
        return self._outstanding

    @property
    def ready(self) -> bool:
        """The channel is open and attached."""
        return self._ch is not None and not self._ch.is_closed

    async def wait_idle(self) -> None:
        """Return once every accepted message is done."""
        await self._idle.wait()

    async def close(self, deadline: float = 10.0) -> int:
        """Stop accepting, wait up to ``deadline`` s for outstanding confirms; return how many
        were left unconfirmed (their ``done`` is never called)."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        left = self._outstanding
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if left:
            log.warning("closing publisher %s with %d messages unconfirmed", self.endpoint, left)
        self._ch = None  # late confirms of the closing channel are ignored
        if self._attacher is not None:
            self._attacher.close()
        if self._robust is not None and not self._robust.is_closed:
            # Known aio-pika#668: restore may race the close during shutdown; nothing to keep.
            # Bounded: on a black-holed link the close handshake never completes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._robust.close(), _CLOSE_HANDSHAKE)
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

    async def _recover(self) -> None:
        """Before re-attaching after a loss: back off, and declare the topology again if the
        broker said an exchange is missing (someone deleted it; we declared it at start)."""
        if self._losses:
            delay = min(_LOSS_BACKOFF_MAX, _LOSS_BACKOFF_FIRST * 2 ** (self._losses - 1))
            await asyncio.sleep(delay)  # back-off, not synchronisation
        if self._missing_entity and self._redeclare is not None:
            self._missing_entity = False
            log.warning("publisher %s: an exchange is missing; declaring it again", self.endpoint)
            try:
                await self._redeclare()
            except Exception as exc:  # the next loss retries, after a longer back-off
                log.error("publisher %s: declaring the topology failed: %s", self.endpoint, exc)

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

    def _reject(self, e: _Entry, exc: Exception) -> None:
        try:
            mid: object = e.msg.message_id
        except Exception:
            mid = "?"
        log.error(
            "publisher %s: message cannot be encoded and is not published: message_id=%.300s "
            "exchange=%.300s error=%s: %.300s",
            self.endpoint,
            mid,
            e.exchange,
            type(exc).__name__,
            exc,
        )
        self._finish(e, PublishResult.UNPUBLISHABLE)

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
            self._unroutable(e)
            return
        rerouted = e.exchange != e.msg.exchange
        self._finish(e, PublishResult.ALTERNATE if rerouted else PublishResult.CONFIRMED)

    def _refused(self, e: _Entry) -> bool:
        """Nacked ``max_nacks`` times: give it back to the caller instead of retrying."""
        if self._max_nacks is None or e.nacks < self._max_nacks or retries_until_routed(e.msg):
            return False
        log.warning(
            "publisher %s: message nacked %d times; not retried: message_id=%.300s exchange=%.300s",
            self.endpoint,
            e.nacks,
            e.msg.message_id,
            e.exchange,
        )
        return True

    def _finish(self, e: _Entry, result: PublishResult) -> None:
        self._outstanding -= 1
        if not self._outstanding:
            self._idle.set()
        try:
            e.done(e.msg, result)
        except Exception:
            log.exception("publisher %s: done callback failed", self.endpoint)

    def _retry_later(self, e: _Entry) -> None:
        delay = min(_NACK_BACKOFF_MAX, _NACK_BACKOFF_FIRST * 2 ** max(0, e.attempts - 1))
        self._delayed += 1
        self._loop.call_later(delay, self._requeue, e)

    def _requeue(self, e: _Entry) -> None:
        self._delayed -= 1
        self._pending.appendleft(e)
        self._wake.set()

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

    def _unroutable(self, e: _Entry) -> None:
        code, text = e.returned or (0, "")
        action = on_returned(
            e.msg,
            exchange=e.exchange,
            alternate=self._alternate,
            code=code,
            text=text,
            endpoint=self.endpoint,
            hooks=self._hooks,
            log=log,
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

    async def _force_close(self, ch: aiormq.Channel) -> None:
        try:
            await asyncio.wait_for(ch.close(), self._publish_timeout)
            return
        except Exception:  # whatever went wrong, the channel is not closing: escalate
            log.warning("publisher %s: channel close hung; closing the connection", self.endpoint)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                ch.connection.close(ConnectionError("publish confirm timeout")),
                self._publish_timeout,
            )


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


def _resolve(fut: asyncio.Future[PublishResult], _msg: Any, result: PublishResult) -> None:
    if not fut.done():
        fut.set_result(result)
