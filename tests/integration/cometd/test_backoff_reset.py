"""The reconnect backoff starts over after a working connect.

After a run of failures the backoff has grown; once a ``/meta/connect`` succeeds, the next
single blip must wait what the protocol says for a first failure (``advice.interval`` for a
lost session, the first backoff step for a network failure), not the grown backoff: otherwise
one trouble early in a process's life slows every later recovery for good.

Jitter is pinned (``rnd`` always 0) so the delays are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.cometd import Client, ConnectionType, events
from bridge.cometd.protocol import Backoff
from tests.fakes.fake_bayeux import Action, FakeBayeux, fail_reply, http_status

from .conftest import Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/fake/backoff"
INTERVAL = 0.1  # the server's advice.interval (seconds)
TROUBLE = 4  # failures in a row before the connection works again
BACKOFF = Backoff(base=0.1, cap=30.0)


def no_jitter() -> float:
    return 0.0


@pytest.fixture
async def server() -> AsyncIterator[FakeBayeux]:
    fake = FakeBayeux(
        timeout_ms=1000,
        interval_ms=int(INTERVAL * 1000),
        max_interval_ms=10_000,  # no escalation to a handshake during the trouble
        browser_cookie=True,
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def fail_next_connects(
    fake: FakeBayeux, recorder: Recorder, action: Action, times: int
) -> list[events.Reconnecting]:
    """Make the next ``times`` connects fail, release the held one, wait for the recovery;
    return the Reconnecting events of that trouble."""
    before = len(recorder.of(events.Reconnecting))
    connected = recorder.count(events.Connected)
    fake.on("/meta/connect", action, nth=fake.count("/meta/connect") + 1, times=times)
    fake.publish(CHANNEL, {"release": "the held connect"})
    await recorder.wait_count(events.Connected, connected + 1)
    return recorder.of(events.Reconnecting)[before:]


@pytest.mark.parametrize(
    ("failure", "blip_delay"),
    [
        # a lost session: the first retry waits advice.interval
        (lambda: fail_reply("402::Unknown client"), INTERVAL),
        # a network-level failure: the first backoff step
        (lambda: http_status(503), BACKOFF.delay(0, no_jitter)),
    ],
    ids=["unknown_session", "http_error"],
)
async def test_a_blip_after_earlier_trouble_waits_the_first_step_not_the_grown_backoff(
    server: FakeBayeux, recorder: Recorder, failure: object, blip_delay: float
) -> None:
    make = failure  # a factory: each rule gets its own action
    assert callable(make)
    client = Client(
        server.url,
        ConnectionType.LONG_POLLING,
        listener=recorder,
        backoff=BACKOFF,
        rnd=no_jitter,
        connection_timeout=30.0,
    )
    async with client:
        await client.subscribe(CHANNEL)
        trouble = await fail_next_connects(server, recorder, make(), TROUBLE)
        grown = [e.delay for e in trouble]
        assert len(grown) == TROUBLE, f"expected {TROUBLE} retries, got {trouble}"
        assert grown[-1] >= 2 * blip_delay, f"the trouble did not grow the backoff: {grown}"

        [blip] = await fail_next_connects(server, recorder, make(), 1)
    assert blip.delay == pytest.approx(blip_delay), (
        f"after a working connect, a single {blip.reason} waited {blip.delay:.3f}s "
        f"(the backoff of the earlier trouble was {grown}); expected {blip_delay:.3f}s: "
        "the attempt counter was not reset"
    )
