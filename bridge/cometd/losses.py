"""What a lost ``/meta/connect`` response costs, by session kind.

A response lost on the way (a dropped connection, an undecodable WebSocket frame) may have
carried events the server already counts as delivered. A replay session re-handshakes and
replays them from the confirmed position; an acknowledged session waits for the server to
send them again; any other session reports a possible gap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from .client_core import ClientCore
from .events import MessageSkipped, PossibleGap
from .exceptions import TransportConnectionClosed, TransportError
from .protocol import ConnectionType


__all__ = ["LostResponses"]


#: The client's one logger, whichever of its modules logs (operators filter on this name).
log = logging.getLogger("bridge.cometd.client")


class LostResponses(ClientCore):
    """Lost-response and skipped-message handling of the client."""

    def _response_lost(self, exc: TransportError) -> bool:
        """A /meta/connect failed: decide what its lost events cost. True: re-handshake."""
        if self._frame_lost:
            # We closed the socket after an undecodable frame, already counted.
            self._frame_lost = False
            return self._replay_lost
        if isinstance(exc, TransportConnectionClosed) and isinstance(
            exc.__cause__, aiohttp.ClientConnectorError
        ):
            return False  # never reached the server: nothing was sent to us
        return self._on_lost_response(str(exc))

    def _on_lost_response(self, detail: str) -> bool:
        if any(e.resumes_by_resubscribing() for e in self.extensions):
            self._replay_lost = True
            return True
        if any(e.can_shed() for e in self.extensions):
            self._ack_resend_due = True  # the server re-sends every unacknowledged message
            return False
        log.warning("a /meta/connect response was lost; its events may be lost: %s", detail)
        self._emit(PossibleGap("response_lost", detail))
        return False

    def _holds_ack(self) -> bool:
        return self._ack_resend_due or any(e.holds_ack() for e in self.extensions)

    def _note_ack_session_end(self) -> None:
        """An acknowledged session ends: count it when the server may still have held
        messages we never received (a lost response, or messages shed while paused)."""
        if self._ack_resend_due or any(e.awaits_resend() for e in self.extensions):
            log.warning("an acknowledged session ended with messages the server still held")
            self._emit(PossibleGap("ack_held", None))
        self._ack_resend_due = False

    def _on_skipped(self, reason: str, detail: str, message: Any = None) -> None:
        log.warning("skipped a server message (%s): %s", reason, detail)
        self._emit(MessageSkipped(reason, detail, message))

    def _on_websocket_skipped(self, reason: str, detail: str, message: Any = None) -> None:
        self._on_skipped(reason, detail, message)
        if reason != "invalid_json" or self._factory.client_id is None:
            return
        # An undecodable frame may have carried events (a long-polling body that fails fails
        # its request; a frame is just skipped by the transport).
        self._on_lost_response(f"undecodable WebSocket frame: {detail}")
        # Close the socket: a reply in that frame is lost too, so the held connect fails at
        # once (a replay session then re-handshakes) instead of after its deadline.
        websocket = self._transports.get(ConnectionType.WEBSOCKET)
        if websocket is not None:
            self._frame_lost = True
            task = asyncio.get_running_loop().create_task(websocket.close())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
