"""The prefetch buffer's bound and exact counts."""

from __future__ import annotations

from bridge.cometd.pending import PendingMessages


def event(n: int) -> dict[str, object]:
    return {"channel": "/a", "data": n}


def test_counts_are_exact_and_fifo() -> None:
    pending = PendingMessages(max_count=10, max_bytes=None)
    for n in range(5):
        pending.append(event(n), 100 + n)
    assert (len(pending), pending.bytes) == (5, 510)
    assert pending.pop() == event(0)
    assert pending.pop_many(3) == [event(1), event(2), event(3)]
    assert (len(pending), pending.bytes) == (1, 104)
    assert pending.pop_many(10) == [event(4)]
    assert (len(pending), pending.bytes, bool(pending)) == (0, 0, False)


def test_count_bound() -> None:
    pending = PendingMessages(max_count=2, max_bytes=None)
    assert pending.admits(2, 10**9)
    assert not pending.admits(3, 1)
    pending.append(event(0), 1)
    pending.append(event(1), 1)
    assert pending.full()
    assert not pending.admits(1, 1)


def test_byte_bound_and_one_oversize_message_alone() -> None:
    pending = PendingMessages(max_count=0, max_bytes=100)  # count unbounded
    assert pending.admits(1, 1_000)  # alone into an empty buffer
    assert not pending.admits(2, 1_000)
    pending.append(event(0), 1_000)
    assert pending.full()
    assert not pending.admits(1, 1)
    pending.pop()
    pending.append(event(1), 60)
    assert not pending.full()
    assert pending.admits(1, 40)
    assert not pending.admits(1, 41)
