"""At-least-once extensions: Salesforce replay and CometD message acknowledgement."""

from __future__ import annotations

from .ack import AckExtension, AckTag
from .replay import (
    REPLAY_ALL,
    REPLAY_NEW,
    InvalidReplayId,
    ReplayExtension,
    event_time_of,
    invalid_replay_id,
    replay_id_of,
)


__all__ = [
    "ReplayExtension",
    "AckExtension",
    "AckTag",
    "REPLAY_NEW",
    "REPLAY_ALL",
    "InvalidReplayId",
    "invalid_replay_id",
    "replay_id_of",
    "event_time_of",
]
