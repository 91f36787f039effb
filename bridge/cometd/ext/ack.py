"""The CometD message acknowledgement extension, acknowledging only what the broker confirmed.

Wire format (CometD ``AcknowledgedMessagesExtension``, also in cometd-nodejs-server):

- handshake: ``ext: {"ack": true}``; a server with the extension answers ``ext.ack == true``
  (or ``{"enabled": true, "batch": N}`` when it delivers messages during the handshake);
- each ``/meta/connect`` reply carries ``ext.ack = B``: the batch it closes. It holds every
  message the server still has unacknowledged with batch <= B, old ones included;
- each ``/meta/connect`` request carries ``ext.ack = A``; the server then drops batches <= A.

The Java and JavaScript clients send the last B they *received*, so an ack means "reached the
library". Here A is the highest batch whose messages were all *confirmed* (:meth:`confirm`,
called by the daemon after the broker's publisher confirm), so the server keeps every message
until RabbitMQ has it. Holding the ack makes the server re-send the unacknowledged messages in
each reply; those repeats are recognised (same content, same order as already received) and
removed from the payload, so the consumer sees each message once per session.

How a message is tied to its batch: :meth:`AckExtension.incoming` adds the key
:data:`ACK_TAG` to each data message dict, with an :class:`AckTag` (session generation, batch).
The key is only read back by :meth:`confirm`; it is not part of the message's ``data``. Tags of
an earlier session are ignored (a new session starts with an empty server queue).

Holding the ack while the client's buffer is full (:meth:`AckExtension.can_shed`): the client
keeps polling to keep the session alive, and each of those replies' new messages (never
received before) is removed and counted in :attr:`AckExtension.messages_shed`. That loses
nothing: such a reply's batch is never recorded, so no ack can cover it (every later reply
re-sends all the server still holds, shed messages included), and the server sends the
messages again on the first poll after shedding stops.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.cometd.extensions import Extension, Headers, Payload
from bridge.cometd.protocol import is_event


__all__ = ["ACK_TAG", "AckTag", "AckExtension"]

ACK_TAG = "x-bridge-ack"
"""Key added to each data message received in an acknowledged batch (value: AckTag)."""

_HANDSHAKE = "/meta/handshake"
_CONNECT = "/meta/connect"


@dataclass(frozen=True, slots=True)
class AckTag:
    """Which session (``generation``) and batch a message arrived in."""

    generation: int
    batch: int


class _Batch:
    __slots__ = ("number", "outstanding")

    def __init__(self, number: int) -> None:
        self.number = number
        self.outstanding = 0


class AckExtension(Extension):
    """Acknowledges a batch once every message of it (and of every earlier batch) is confirmed.

    :attr:`supported` is None until a handshake reply, then whether the server acknowledges.
    :attr:`acked` is what the next ``/meta/connect`` sends. :attr:`duplicates_dropped` counts
    server re-sends removed from payloads; :attr:`messages_shed` counts new messages left with
    the server while shedding (sent again later, not lost).
    """

    def __init__(self) -> None:
        self.supported: bool | None = None
        self.duplicates_dropped = 0
        self.messages_shed = 0
        self._shedding = False
        # Messages were left with the server (shed) and no batch has been recorded since.
        self._shed_unreceived = False
        self._generation = 0
        self._acked = 0
        self._batches: deque[_Batch] = deque()
        self._by_number: dict[int, _Batch] = {}
        # Messages received in batches the server may still re-send: (batch, fingerprint), in
        # arrival order. Pruned to batches above the ack each connect carries.
        self._unacked: deque[tuple[int, int]] = deque()

    @property
    def acked(self) -> int:
        """The batch the next ``/meta/connect`` acknowledges."""
        return self._acked

    @property
    def outstanding(self) -> int:
        """Messages of this session received but not yet confirmed."""
        return sum(b.outstanding for b in self._batches)

    def confirm(self, message: Mapping[str, Any]) -> None:
        """The broker confirmed ``message`` (or the daemon settled it otherwise: it must call
        this for every delivered message, also one it skips, or the ack stays held)."""
        tag = message.get(ACK_TAG)
        if not isinstance(tag, AckTag) or tag.generation != self._generation:
            return
        batch = self._by_number.get(tag.batch)
        if batch is None or batch.outstanding <= 0:
            return
        batch.outstanding -= 1
        batches = self._batches
        while batches and batches[0].outstanding == 0:
            done = batches.popleft()
            del self._by_number[done.number]
            self._acked = max(self._acked, done.number)

    def can_shed(self) -> bool:
        """Only when the server acknowledges: then it keeps what we do not acknowledge."""
        return self.supported is True

    def set_shedding(self, on: bool) -> None:
        self._shedding = on

    def holds_ack(self) -> bool:
        """True while the server keeps messages of this session that we have not acknowledged:
        received but unconfirmed, or shed and not received again yet."""
        return self.supported is True and (bool(self._batches) or self._shed_unreceived)

    def awaits_resend(self) -> bool:
        """True while messages shed while paused have not come back yet."""
        return self.supported is True and self._shed_unreceived

    # -- wire --------------------------------------------------------------------------------

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        for message in payload:
            channel = message.get("channel")
            if channel == _HANDSHAKE:
                self._new_session()
                _ext(message)["ack"] = True
            elif channel == _CONNECT and self.supported:
                _ext(message)["ack"] = self._acked
                # The server drops batches <= acked; only later ones can come back.
                unacked = self._unacked
                while unacked and unacked[0][0] <= self._acked:
                    unacked.popleft()

    async def incoming(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        batch: int | None = None
        for message in payload:
            channel = message.get("channel")
            ext = message.get("ext")
            if channel == _HANDSHAKE and message.get("successful") is True:
                ack = ext.get("ack") if isinstance(ext, dict) else None
                if isinstance(ack, dict):
                    self.supported = ack.get("enabled") is True
                    handshake_batch = ack.get("batch")
                    if self.supported and _is_int(handshake_batch):
                        batch = handshake_batch
                else:
                    self.supported = ack is True
            elif channel == _CONNECT and isinstance(ext, dict) and _is_int(ext.get("ack")):
                batch = ext["ack"]
        if batch is None or not self.supported:
            return
        self._receive_batch(payload, batch)

    # -- internals ---------------------------------------------------------------------------

    def _new_session(self) -> None:
        self._generation += 1
        self._acked = 0
        self._shed_unreceived = False
        self._batches.clear()
        self._by_number.clear()
        self._unacked.clear()

    def _receive_batch(self, payload: Payload, number: int) -> None:
        # What the server re-sends comes first, in the order we received it before.
        expected = iter(list(self._unacked))
        matching = True
        keep: list[dict[str, Any]] = []
        new: list[tuple[dict[str, Any], int]] = []
        shed = 0
        for message in payload:
            if not is_event(message):
                keep.append(message)  # meta replies are never shed
                continue
            fingerprint = _fingerprint(message)
            if matching:
                previous = next(expected, None)
                if previous is not None and previous[1] == fingerprint:
                    self.duplicates_dropped += 1
                    continue
                matching = False
            if self._shedding:
                shed += 1
                continue
            new.append((message, fingerprint))
            keep.append(message)
        payload[:] = keep
        if shed:
            # Left unrecorded, this batch can never be acknowledged: the server keeps its
            # messages (and every later batch's) and re-sends them in each reply.
            self.messages_shed += shed
            self._shed_unreceived = True
            return
        self._shed_unreceived = False
        record = self._by_number.get(number)
        if record is None and number > self._acked:
            record = _Batch(number)
            self._batches.append(record)
            self._by_number[number] = record
        tag = AckTag(self._generation, number)
        for message, fingerprint in new:
            message[ACK_TAG] = tag
            if record is not None:
                record.outstanding += 1
                self._unacked.append((number, fingerprint))
        if record is not None and record.outstanding == 0 and self._batches[0] is record:
            # An empty batch at the front is done at once.
            self._batches.popleft()
            del self._by_number[number]
            self._acked = max(self._acked, number)


def _fingerprint(message: Mapping[str, Any]) -> int:
    try:
        return hash(json.dumps(message, sort_keys=True, separators=(",", ":"), default=repr))
    except (ValueError, TypeError, RecursionError):
        # One message that cannot be serialised (circular, too deep, unsortable keys) must not
        # fail its whole payload: it gets a fingerprint from what identifies it, so at worst a
        # re-send of it is delivered once more (never lost).
        return hash(("unserialisable", str(message.get("channel")), str(message.get("id"))))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ext(message: dict[str, Any]) -> dict[str, Any]:
    ext = message.get("ext")
    if not isinstance(ext, dict):
        ext = message["ext"] = {}
    return ext
