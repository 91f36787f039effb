"""``BRIDGE_AMQP_URL`` with several brokers: tried in order at start, the next one after a
loss (the lease and the publish path then re-enter on whichever broker answers)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from bridge.amqp import AmqpConnection
from tests.e2e.test_noloss_faults import pausable_proxy


pytestmark = pytest.mark.integration


def _refused_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on once this returns
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


async def test_start_skips_an_unreachable_broker_for_the_next(amqp_url: str) -> None:
    states: list[bool] = []
    conn = AmqpConnection(
        f"{_refused_url()},{amqp_url}", connection_name="pytest broker-urls", on_state=states.append
    )
    await conn.start()
    try:
        assert conn.connected
        assert states == [True]
    finally:
        await conn.close(1.0)


async def test_after_losing_the_first_broker_it_reconnects_to_the_next(amqp_url: str) -> None:
    async with pausable_proxy() as proxy:
        first = _with_query(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "reconnect_interval=1")
        second = _with_query(amqp_url, "reconnect_interval=1")
        states: list[bool] = []
        back = asyncio.Event()

        def on_state(up: bool) -> None:
            states.append(up)
            if up and len(states) > 1:
                back.set()

        conn = AmqpConnection(
            f"{first},{second}", connection_name="pytest broker-urls", on_state=on_state
        )
        await conn.start()
        try:
            await proxy.close()  # the first broker is gone (and stays gone)
            started = time.monotonic()
            try:
                await asyncio.wait_for(back.wait(), 15.0)
            except TimeoutError:
                raise AssertionError(f"not reconnected to the second broker: {states}") from None
            assert states[:2] == [True, False]
            assert conn.connected
            print(f"reconnected to the second broker in {time.monotonic() - started:.1f} s")
        finally:
            await conn.close(1.0)
