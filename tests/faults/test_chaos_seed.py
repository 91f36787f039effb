"""A 45-second seed of the chaos run (``make chaos`` runs it longer with any seed): faults of
every kind against a replay server and an ack server while both stream, and nothing missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.chaos import run_chaos


pytestmark = pytest.mark.integration

SEED = 20261201  # printed with the table; a failing schedule replays exactly with this seed


@pytest.mark.timeout(420)
async def test_chaos_seed_loses_nothing_on_replay_and_ack_servers(
    amqp_url: str, tmp_path: Path
) -> None:
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line)

    result = await run_chaos(SEED, 45.0, rate=150, gap=2.5, workdir=tmp_path, log=log)
    report = "\n".join(lines)
    for target, rows in result.results.items():
        faults = {kind: row for kind, row in rows.items() if kind != "none"}
        assert faults, f"no fault injected on {target}:\n{report}"
        missed = {k: r.injected - r.hit for k, r in faults.items() if r.hit < r.injected}
        assert not missed, f"faults that hit nothing on {target}: {missed}\n{report}"
        unrecovered = {
            k: r.injected - r.recovered for k, r in faults.items() if r.recovered < r.injected
        }
        assert not unrecovered, f"silent stalls on {target} after: {unrecovered}\n{report}"
    assert not any(result.missing.values()), f"events missing from RabbitMQ:\n{report}"
    assert all(n > 0 for n in result.published.values())
