"""The bounded prefetch buffer: what fits, what is delivered, and how a transport is held
until the consumer makes room (the bound holds at every moment, see :class:`Client`)."""

from __future__ import annotations

import asyncio
import logging

from .client_core import _CLOSED_BY_SERVER, ClientCore
from .events import FetchPaused, FetchResumed
from .exceptions import ServerError
from .extensions import Extension
from .protocol import META_DISCONNECT, ConnectionType, Message, is_event
from .session_state import Event


__all__ = ["PrefetchBuffer"]


#: The client's one logger, whichever of its modules logs (operators filter on this name).
log = logging.getLogger("bridge.cometd.client")


class PrefetchBuffer(ClientCore):
    """Delivery into the prefetch buffer and the holds that keep it bounded."""

    def _admits(self, count: int, size: int) -> bool:
        """Whether ``count`` more events of ``size`` bytes in all fit in the buffer now."""
        if self._session_state.closing:
            # Closing: the rest of a held response is taken (the server counts it as
            # delivered; receive() still returns the buffer after close), not left in a
            # socket about to be closed.
            return True
        return self._pending.admits(count, size)

    async def _wait_room(self, size: int) -> None:
        """Hold a transport until one more event of ``size`` bytes fits in the buffer.

        With an extension that can shed, on the long-poll ``/meta/connect``, the hold lasts at
        most one keep-alive pace: a server that acknowledges counts a response as sent once
        it is in the socket and expires a session that reads no further. The rest of the
        response is then shed, message by message as it is decoded (the server keeps it and
        sends it again): memory stays flat however large the re-sent backlog.
        """
        shedder = self._response_shedder()
        session = self._session_state
        if shedder is not None and (self._shedding_response is not None or session.paused):
            return  # this response is being shed (a keep-alive, or held too long already)
        if session.paused:  # already paused (the background task): no second event
            while not self._admits(1, size):
                self._space.clear()
                await self._space.wait()
            return
        session.apply(Event.HOLD)
        self._emit(FetchPaused(len(self._pending)))
        try:
            async with asyncio.timeout(self._keepalive_pace() if shedder else None):
                while not self._admits(1, size) and not session.closed:
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            assert shedder is not None  # no timeout without a shedder
            shedder.set_shedding(True)
            self._shedding_response = shedder
        finally:
            self._held_until = self._now()
            session.apply(Event.RELEASE)
            self._emit(FetchResumed(len(self._pending)))

    def _lost_to_held_response(self) -> bool:
        """A session lost now may have expired while a response was held (buffer full): the
        server counts its expiry from when it sent the response, not from when we read it."""
        held = self._held_until
        return held is not None and self._now() - held <= self._advice.session_expiry

    def _response_shedder(self) -> Extension | None:
        transport = self._transport
        if not self._polling or transport is None:
            return None
        if transport.connection_type is not ConnectionType.LONG_POLLING:
            return None
        return next((e for e in self.extensions if e.can_shed()), None)

    def _response_done(self) -> None:
        shedder, self._shedding_response = self._shedding_response, None
        if shedder is not None:
            shedder.set_shedding(False)

    def _deliver(self, messages: list[Message], sizes: list[int]) -> None:
        """Take events (and unsolicited replies) the transport did not match to a request."""
        if self._replay_lost:
            # Replayed from the confirmed position by the coming re-handshake.
            return
        append = self._pending.append
        added = 0
        for message, size in zip(messages, sizes, strict=True):
            if is_event(message):
                append(message, size)
                added += 1
            elif message.get("channel") == META_DISCONNECT and not self._session_state.closing:
                # Server-side close: the session ends; reported, never ignored.
                self._set_fatal(ServerError(_CLOSED_BY_SERVER, message))
            # Anything else is a stale or unsolicited reply: discarded.
        if added:
            self._delivered += added
            self._wakeup.set()
