"""The failover accounting the HA bench's figures rest on: kill → the new owner's first message,
what it sent again, and what never arrived."""

from __future__ import annotations

import pytest

from bench.failover import EpochLog


def stream(log: EpochLog, epoch: int, seqs: list[int], start: float, step: float = 0.01) -> None:
    for i, seq in enumerate(seqs):
        log.add(seq, epoch, start + i * step)


def test_a_takeover_is_timed_from_the_kill_to_the_new_owners_first_message() -> None:
    log = EpochLog()
    stream(log, 1, [1, 2, 3, 4, 5], start=100.0)
    log.kill(100.5, 1)
    # The new owner replays from its stored position (after 3): 4 and 5 come again.
    stream(log, 2, [4, 5, 6, 7], start=100.75)
    (t,) = log.takeovers()
    assert (t.old_epoch, t.new_epoch, t.duplicates) == (1, 2, 2)
    assert t.seconds == pytest.approx(0.25)
    assert log.duplicates == 2
    assert log.distinct == 7
    assert log.missing(7) == []
    assert log.missing(9) == [8, 9]
    assert (log.delivered(1), log.delivered(2)) == (5, 4)
    assert (log.fresh(1), log.fresh(2)) == (5, 2)
    assert log.latest_epoch == 2


def test_late_messages_of_the_killed_owner_do_not_count_as_the_takeover() -> None:
    log = EpochLog()
    stream(log, 1, [1, 2], start=10.0)
    log.kill(10.1, 1)
    stream(log, 1, [3], start=10.2)  # in flight at the broker when the owner died
    assert log.first_after(1) is None
    stream(log, 2, [3, 4], start=10.4)
    stream(log, 1, [4], start=10.6)  # later still: the old epoch's copy is the repeat
    (t,) = log.takeovers()
    assert t.seconds == pytest.approx(0.3)
    assert t.duplicates == 1  # seq 3, already delivered by the killed owner
    assert log.duplicates == 2


def test_each_kill_is_matched_to_the_next_epoch_that_delivered() -> None:
    log = EpochLog()
    stream(log, 5, [1, 2], start=0.0)
    log.kill(1.0, 5)
    # Epoch 6 was taken and lost without publishing anything: 7 is the next owner's.
    stream(log, 7, [3, 4], start=1.5)
    log.kill(2.0, 7)
    stream(log, 8, [5], start=2.25)
    log.kill(3.0, 8)
    (first, second, third) = log.takeovers()
    assert first.new_epoch == 7
    assert first.seconds == pytest.approx(0.5)
    assert second.new_epoch == 8
    assert second.seconds == pytest.approx(0.25)
    assert (third.new_epoch, third.first_at, third.seconds) == (None, None, None)
