"""ContiguousWatermark against a deliberately naive model (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from bridge.positions import ContiguousWatermark


class Model:
    """Quadratic but obviously right: recompute the confirmed prefix from scratch."""

    def __init__(self, position: int | None) -> None:
        self.start = position
        self.arrivals: list[list[object]] = []  # [replay_id, done]

    def received(self, replay_id: int) -> None:
        self.arrivals.append([replay_id, False])

    def confirmed(self, replay_id: int) -> None:
        for entry in self.arrivals:
            if entry[0] == replay_id:
                entry[1] = True

    @property
    def position(self) -> int | None:
        best = self.start
        for replay_id, done in self.arrivals:
            if not done:
                break
            assert isinstance(replay_id, int)
            best = replay_id if best is None else max(best, replay_id)
        return best

    @property
    def pending(self) -> int:
        n = 0
        for _, done in self.arrivals:
            if not done:
                break
            n += 1
        return len(self.arrivals) - n


ops = st.lists(
    st.tuples(st.sampled_from(["recv", "conf"]), st.integers(min_value=0, max_value=30)),
    max_size=200,
)


@settings(max_examples=400)
@given(start=st.none() | st.integers(min_value=-2, max_value=10), steps=ops)
def test_matches_model(start: int | None, steps: list[tuple[str, int]]) -> None:
    mark, model = ContiguousWatermark(start), Model(start)
    for op, replay_id in steps:
        before = mark.position
        if op == "recv":
            mark.received(replay_id)
            model.received(replay_id)
            assert mark.position == before  # receiving never moves the watermark
        else:
            moved = mark.confirmed(replay_id)
            model.confirmed(replay_id)
            assert moved == (mark.position != before)
        assert mark.position == model.position
        assert mark.pending == model.pending


@given(ids=st.lists(st.integers(min_value=1, max_value=10_000), unique=True, min_size=1))
def test_increasing_stream_confirmed_in_any_order_ends_at_the_last_id(ids: list[int]) -> None:
    arrival = sorted(ids)
    mark = ContiguousWatermark()
    for replay_id in arrival:
        mark.received(replay_id)
    for replay_id in ids:  # hypothesis order = an arbitrary confirm order
        mark.confirmed(replay_id)
        # Never ahead of an unconfirmed message.
        unconfirmed = [r for r in arrival if r not in ids[: ids.index(replay_id) + 1]]
        if unconfirmed and mark.position is not None:
            assert mark.position < unconfirmed[0]
    assert mark.position == arrival[-1]
    assert mark.pending == 0


def test_does_not_pass_an_unconfirmed_message() -> None:
    mark = ContiguousWatermark(5)
    for replay_id in (6, 7, 8):
        mark.received(replay_id)
    assert not mark.confirmed(7)
    assert not mark.confirmed(8)
    assert mark.position == 5
    assert mark.confirmed(6)
    assert mark.position == 8


def test_confirm_of_unknown_id_is_ignored() -> None:
    mark = ContiguousWatermark(3)
    assert not mark.confirmed(4)
    assert mark.position == 3


def test_a_duplicate_is_settled_by_one_confirm() -> None:
    """A replay repeats in-flight ids; the broker holding one copy is enough."""
    mark = ContiguousWatermark()
    mark.received(1)
    mark.received(2)
    mark.received(1)  # replayed copy
    mark.received(2)
    mark.confirmed(1)
    assert mark.position == 1
    mark.confirmed(2)
    assert mark.position == 2
    assert mark.pending == 0
