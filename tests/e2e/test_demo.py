"""`cometd-bridge demo` — what a newcomer runs first — streams into the local RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest


pytestmark = pytest.mark.integration


async def test_demo_prints_messages_that_arrived_in_rabbitmq(amqp_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_AMQP_URL"] = amqp_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        "--count",
        "8",
        "--rate",
        "40",
        "--http-port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(60):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text
    arrivals = [line for line in text.splitlines() if line.lstrip().startswith("←")]
    assert len(arrivals) >= 8, text
    assert any("event.Order__e" in line for line in arrivals)
    # The queue was bound before the bridge published and the source waited for the bridge's
    # subscriptions: the first event is the first printed and none of either channel is missing.
    assert "replayId=1001 " in arrivals[0], arrivals[:3]
    for channel, first in (("event.Order__e", 1001), ("data.AccountChangeEvent", 2001)):
        ids = [int(re.findall(r"replayId=(\d+)", a)[0]) for a in arrivals if channel in a]
        assert ids == list(range(first, first + len(ids))), (channel, ids)
    summary = re.search(r"^(\d+) messages arrived in RabbitMQ\.$", text, re.MULTILINE)
    assert summary is not None, text
    assert int(summary.group(1)) == len(arrivals)
    assert "/metrics" in text
