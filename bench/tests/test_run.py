"""The benchmark harness end to end at a tiny size: every variant starts, moves every message
and is measured (no timing is asserted: figures are the bench's output, not a test verdict)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.run import Bench, _node_available, parse_args, ratios


pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 300


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    b = Bench(parse_args(["--quick"]))
    await b.setup()
    try:
        yield b
    finally:
        await b.teardown()


@pytest.mark.parametrize(
    "variant",
    ["bridge", "baseline", "receive-only", "node", "publish-only", "publish-only-bridge"],
)
async def test_every_variant_delivers_every_message_exactly(bench: Bench, variant: str) -> None:
    if variant == "node" and not _node_available():
        pytest.skip("the Node reference bridge needs `npm ci` in bench/ (make bench does it)")
    kind = "" if variant.startswith("publish-only") else "cometd"
    r = await bench.stream("burst 200 B", variant, kind, N, 200, None)
    assert r.note == ""
    assert (r.missing, r.duplicates) == (0, 0)
    assert r.rate is not None
    assert r.rate > 0
    assert r.cpu_s is not None
    # Measured, though a few hundred messages can take less than one clock tick (10 ms) of
    # CPU in our own publisher: zero is a reading, a negative figure a bug.
    assert r.cpu_s >= 0
    assert r.peak_rss_mb is not None
    assert r.peak_rss_mb > 0
    if not variant.startswith("publish-only"):
        assert r.p50_ms is not None
        assert r.p99_ms is not None
        assert 0 < r.p50_ms <= r.p99_ms, (r.p50_ms, r.p99_ms)


async def test_bridge_on_websocket_and_ratios(bench: Bench) -> None:
    for variant in ("bridge", "baseline"):
        r = await bench.stream("burst 200 B", variant, "faye", N, 200, None)
        assert (r.missing, r.duplicates) == (0, 0)
    await bench.stream("burst 200 B", "publish-only", "", N, 200, None)
    await bench.stream("burst 200 B", "publish-only-bridge", "", N, 200, None)
    (row,) = ratios(bench.results)
    assert row["vs_baseline"] is not None
    assert row["vs_sink"] is not None
    assert row["vs_fast_sink"] is not None


async def test_bridge_on_uvloop(bench: Bench) -> None:
    pytest.importorskip("uvloop")  # measured on request (--uvloop), not a dependency
    r = await bench.stream("burst 200 B", "bridge+uvloop", "faye", N, 200, None)
    assert r.note == ""
    assert (r.missing, r.duplicates) == (0, 0)


async def test_busy_and_idle_endpoints(bench: Bench) -> None:
    r = await bench.busy("faye", 3, N, 200)
    assert (r.missing, r.duplicates) == (0, 0)
    row = await bench.idle("cometd", 2, 0.2)
    assert row["rss_mb"] > 0
