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

How a message is tied to its batch: :meth:`AckExtension.incoming` tags each data message
with an :class:`AckTag` (session generation, batch). The consumer reads it once at receive with
:meth:`AckExtension.ack_tag_of`, carries it along with what it made of the message and hands
it back to :meth:`AckExtension.confirm`. The tag rides in
the message dict under a key only this module reads; it is not part of the message's ``data``.
Tags of an earlier session are ignored (a new session starts with an empty server queue).

A response is decoded and delivered in parts as the client's buffer has room, and the
``/meta/connect`` reply that names the batch comes last (after the queued messages). The
messages of the parts before it are matched against re-sends, shed or tagged as they pass (the
tag, an :class:`AckTag` whose batch is filled in when the reply arrives, is the one object all
of them share), so nothing of the response is held here but one fingerprint per new message.
Re-sent messages are dropped part by part as they are decoded; new ones are shed only in the
part that carries the reply (before it, a part may be a push the server does not keep).

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


__all__ = ["AckTag", "AckExtension"]

# Key added to each data message received in an acknowledged batch (value: AckTag); read only
# by AckExtension.ack_tag_of.
_TAG_KEY = "x-bridge-ack"

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


class _Open:
    """The part of a response received before its ``/meta/connect`` reply."""

    __slots__ = ("confirmed", "expected", "matching", "new", "prints", "shed", "tag")

    def __init__(self, tag: AckTag, expected: list[tuple[int, int]]) -> None:
        self.tag = tag  # shared by its messages; the batch is set when the reply arrives
        self.expected = iter(expected)
        self.matching = True
        self.new = 0
        self.confirmed = 0  # confirmed before the batch was known
        self.prints: list[int] = []
        self.shed = 0


class _Carry:
    """The kept part of a response whose rest was shed: unacknowledged until a later batch."""

    __slots__ = ("outstanding", "tag")

    def __init__(self, tag: AckTag, outstanding: int) -> None:
        self.tag = tag
        self.outstanding = outstanding


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
        self._open: _Open | None = None
        self._carried: list[_Carry] = []

    @property
    def acked(self) -> int:
        """The batch the next ``/meta/connect`` acknowledges."""
        return self._acked

    @property
    def outstanding(self) -> int:
        """Messages of this session received but not yet confirmed: in recorded batches, in
        the part of a response read before its batch number, and carried to a later batch."""
        total = sum(b.outstanding for b in self._batches)
        total += sum(c.outstanding for c in self._carried)
        opened = self._open
        if opened is not None:
            total += opened.new - opened.confirmed
        return total

    @staticmethod
    def ack_tag_of(message: Mapping[str, Any]) -> AckTag | None:
        """The tag of a received data message (None: not part of an acknowledged batch)."""
        tag = message.get(_TAG_KEY)
        return tag if isinstance(tag, AckTag) else None

    def confirm(self, tag: AckTag | None) -> None:
        """The broker confirmed the message tagged ``tag`` (or the daemon settled it otherwise:
        it must call this for every delivered message, also one it skips, or the ack stays
        held). None and tags of an earlier session change nothing."""
        if tag is None or tag.generation != self._generation:
            return
        opened = self._open
        if opened is not None and tag is opened.tag:
            opened.confirmed += 1
            return
        for carry in self._carried:
            if tag is carry.tag:
                carry.outstanding -= 1
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
                # A response cut before its reply leaves its part unrecorded: the server
                # re-sends those messages (it was never acknowledged).
                self._open = None
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
        if not self.supported:
            return
        if batch is None:
            if any(is_event(m) for m in payload):
                # A part of a long-poll response (headers given) is a part of a /meta/connect
                # reply: a server that acknowledges delivers only there (cometd's
                # metaConnectDeliveryOnly). Anything else (a WebSocket push) is never shed: the
                # server may not keep it.
                self._receive_part(payload, may_shed=headers is not None)
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
        self._open = None
        self._carried.clear()

    def _filter(
        self, payload: Payload, opened: _Open, *, may_shed: bool
    ) -> list[tuple[dict[str, Any], int]]:
        """Drop re-sends and (while shedding) new messages; return the new ones kept."""
        # What the server re-sends comes first, in the order we received it before.
        keep: list[dict[str, Any]] = []
        new: list[tuple[dict[str, Any], int]] = []
        for message in payload:
            if not is_event(message):
                keep.append(message)  # meta replies are never shed
                continue
            fingerprint = _fingerprint(message)
            if opened.matching:
                previous = next(opened.expected, None)
                if previous is not None and previous[1] == fingerprint:
                    self.duplicates_dropped += 1
                    continue
                opened.matching = False
            if self._shedding and may_shed:
                opened.shed += 1  # discarded here, one by one: nothing of it is kept
                continue
            new.append((message, fingerprint))
            keep.append(message)
        payload[:] = keep
        return new

    def _receive_part(self, payload: Payload, *, may_shed: bool) -> None:
        opened = self._open
        if opened is None:
            opened = self._open = _Open(AckTag(self._generation, 0), list(self._unacked))
        for message, fingerprint in self._filter(payload, opened, may_shed=may_shed):
            message[_TAG_KEY] = opened.tag
            opened.new += 1
            opened.prints.append(fingerprint)

    def _receive_batch(self, payload: Payload, number: int) -> None:
        opened, self._open = self._open, None
        early = opened is not None
        if opened is None:
            opened = _Open(AckTag(self._generation, number), list(self._unacked))
        new = self._filter(payload, opened, may_shed=True)
        shed = opened.shed
        if shed:
            # Left unrecorded, this batch can never be acknowledged: the server keeps its
            # messages (and every later batch's) and re-sends them in each reply.
            self.messages_shed += shed
            self._shed_unreceived = True
            if early and opened.new:
                # The part kept before shedding began is re-sent first next time (recognised
                # as re-sends), and its confirms count towards the next batch recorded: the
                # server keeps it in this batch, which only an ack of a later one covers.
                self._unacked.extend((number, p) for p in opened.prints)
                self._carried.append(_Carry(opened.tag, opened.new - opened.confirmed))
            return
        self._shed_unreceived = False
        record = self._by_number.get(number)
        if record is None and number > self._acked:
            record = _Batch(number)
            self._batches.append(record)
            self._by_number[number] = record
        if record is not None and self._carried:
            for carry in self._carried:
                object.__setattr__(carry.tag, "batch", number)
                record.outstanding += carry.outstanding
            self._carried.clear()
        tag = opened.tag
        if early:
            # The part's messages share this tag: from now on it names their batch. (A frozen
            # tag is filled in once, here, before anything but this extension compares it.)
            object.__setattr__(tag, "batch", number)
            if record is not None:
                record.outstanding += opened.new - opened.confirmed
                self._unacked.extend((number, p) for p in opened.prints)
        for message, fingerprint in new:
            message[_TAG_KEY] = tag
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
