"""At-least-once extensions: Salesforce replay and CometD message acknowledgement."""

from __future__ import annotations

from .ack import ACK_TAG, AckExtension, AckTag
from .replay import (
    REPLAY_ALL,
    REPLAY_NEW,
    GapPolicy,
    InvalidReplayId,
    ReplayExtension,
    ReplayGapError,
    event_time_of,
    gap_record,
    gap_start,
    initial_start,
    invalid_replay_id,
    replay_id_of,
)


__all__ = [
    "ReplayExtension",
    "AckExtension",
    "ACK_TAG",
    "AckTag",
    "REPLAY_NEW",
    "REPLAY_ALL",
    "GapPolicy",
    "InvalidReplayId",
    "ReplayGapError",
    "invalid_replay_id",
    "gap_start",
    "gap_record",
    "initial_start",
    "replay_id_of",
    "event_time_of",
]
