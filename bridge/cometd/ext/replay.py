"""The Salesforce replay extension: the wire format, the invalid-replay-id refusal, event fields.

Wire format (Salesforce Streaming API, also the test server tests/servers/salesforce_server.js):

- handshake: ``ext: {"replay": true}``; a server with replay answers ``ext.replay == true``;
- subscribe: ``ext: {"replay": {channel: id}}``; ``-1`` new events only, ``-2`` all retained
  events, ``N`` the events after replay id N;
- events carry ``data.event.replayId``;
- an id older than the retention window fails the subscribe with
  ``400::The replayId {N} you provided was invalid. Please provide a valid ID, -2 to replay all
  events, or -1 to replay only new events.``

The id for a subscribe is computed when the message is sent, not when it was created, so the
client's automatic resubscriptions after a re-handshake resume from the latest confirmed
position (resubscribing with the initial id would replay everything, or lose the gap). An
optional ``settle`` hook is awaited first: the consumer may use it to settle what the ended
session had delivered (nothing new arrives before the subscribe), so the confirmed position
has caught up and the server replays nothing the consumer already holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.cometd.extensions import Extension, Headers, Payload
from bridge.cometd.protocol import refused_replay_id


__all__ = [
    "REPLAY_NEW",
    "REPLAY_ALL",
    "ReplayExtension",
    "InvalidReplayId",
    "invalid_replay_id",
    "replay_id_of",
    "event_time_of",
]

REPLAY_NEW = -1
"""Subscribe from the tip: new events only."""
REPLAY_ALL = -2
"""Subscribe from the earliest retained event."""

_HANDSHAKE = "/meta/handshake"
_SUBSCRIBE = "/meta/subscribe"

PositionSource = Callable[[str], int | None]
SettleHook = Callable[[], Awaitable[None]]


def _replay_key(channel: str) -> str:
    # Salesforce keys the map by the channel without a PushTopic query string.
    return channel.split("?", 1)[0]


class ReplayExtension(Extension):
    """Adds replay ids to every ``/meta/subscribe``, computed at send time.

    ``position(channel)`` returns the confirmed position to resume from (the consumer's stored
    position) or None; then the channel's start applies (``start`` for all
    channels, or one set with :meth:`set_start`, e.g. after a gap). :attr:`supported` is None
    until a handshake reply said whether the server replays.

    ``settle`` (optional) is awaited before the ids of a subscribe are read; it must return
    within a bound of its own (the subscribe waits for it).
    """

    def __init__(
        self, position: PositionSource, start: int = REPLAY_NEW, settle: SettleHook | None = None
    ) -> None:
        self._position = position
        self._settle = settle
        self._start = start
        self._starts: dict[str, int] = {}
        self.supported: bool | None = None

    def set_start(self, channel: str, start: int) -> None:
        """Where ``channel`` starts while it has no position (e.g. after a gap)."""
        self._starts[_replay_key(channel)] = start

    def resumes_by_resubscribing(self) -> bool:
        return self.supported is True

    def replay_from(self, channel: str) -> int:
        """The id the next subscribe to ``channel`` sends."""
        key = _replay_key(channel)
        position = self._position(key)
        if position is not None:
            return position
        return self._starts.get(key, self._start)

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        settle = self._settle  # awaited once per payload (a resubscription sends them all)
        for message in payload:
            channel = message.get("channel")
            if channel == _HANDSHAKE:
                _ext(message)["replay"] = True
            elif channel == _SUBSCRIBE and self.supported is not False:
                if settle is not None:
                    await settle()
                    settle = None
                subscription = message.get("subscription")
                channels = subscription if isinstance(subscription, list) else [subscription]
                replay = {
                    _replay_key(ch): self.replay_from(ch) for ch in channels if isinstance(ch, str)
                }
                if replay:
                    _ext(message)["replay"] = replay

    async def incoming(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        for message in payload:
            if message.get("channel") == _HANDSHAKE and message.get("successful") is True:
                ext = message.get("ext")
                self.supported = isinstance(ext, dict) and ext.get("replay") is True


def _ext(message: dict[str, Any]) -> dict[str, Any]:
    ext = message.get("ext")
    if not isinstance(ext, dict):
        ext = message["ext"] = {}
    return ext


# -- the invalid-replay-id failure -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvalidReplayId:
    """A subscribe refused because the replay id is outside the server's retention."""

    channel: str
    replay_id: int | None
    error: str


def invalid_replay_id(reply: Mapping[str, Any] | None) -> InvalidReplayId | None:
    """Classify a failed ``/meta/subscribe`` reply (e.g. ``ServerError.response``).

    Returns None for any other failure, which the caller treats as a plain subscribe error.
    """
    if not reply or reply.get("successful") is True:
        return None
    error = reply.get("error")
    if not isinstance(error, str):
        return None
    refused, replay_id = refused_replay_id(error)
    if not refused:
        return None
    subscription = reply.get("subscription")
    if isinstance(subscription, list):
        subscription = subscription[0] if subscription else None
    channel = _replay_key(subscription) if isinstance(subscription, str) else ""
    return InvalidReplayId(channel, replay_id, error)


# -- reading events -----------------------------------------------------------------------------


def replay_id_of(message: Mapping[str, Any]) -> int | None:
    """``data.event.replayId`` as an int, or None when the event has none."""
    data = message.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    replay_id = event.get("replayId") if isinstance(event, dict) else None
    if isinstance(replay_id, int) and not isinstance(replay_id, bool):
        return replay_id
    return None


def event_time_of(message: Mapping[str, Any]) -> str | None:
    """The event's own timestamp as the server wrote it, for operators (not for ordering).

    PushTopic ``data.event.createdDate``; platform event ``data.payload.CreatedDate``; CDC
    ``data.payload.ChangeEventHeader.commitTimestamp`` (epoch ms, returned as a string).
    """
    data = message.get("data")
    if not isinstance(data, dict):
        return None
    event = data.get("event")
    if isinstance(event, dict) and isinstance(event.get("createdDate"), str):
        return str(event["createdDate"])
    payload = data.get("payload")
    if isinstance(payload, dict):
        if isinstance(payload.get("CreatedDate"), str):
            return str(payload["CreatedDate"])
        header = payload.get("ChangeEventHeader")
        if isinstance(header, dict):
            commit = header.get("commitTimestamp")
            if isinstance(commit, int | str) and not isinstance(commit, bool):
                return str(commit)
    return None
