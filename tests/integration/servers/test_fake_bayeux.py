"""The scriptable fake: each fault is produced exactly where it was scripted (raw aiohttp)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fakes.fake_bayeux import (
    AUTH_INVALID,
    SALESFORCE_UNKNOWN_CLIENT,
    SFDC_CONCURRENT_LIMIT,
    Action,
    FakeBayeux,
    append_messages,
    delay,
    drop_advice,
    duplicate_reply,
    fail_reply,
    handshake_denied,
    http_status,
    multiple_clients,
    patch_reply,
    raw_body,
    server_disconnect,
    stale_connect_reply,
)
from tests.fixtures.raw_bayeux import RawBayeux, WebSocketClosedError


pytestmark = pytest.mark.integration


async def started(fake: FakeBayeux, *, websocket: bool = False) -> RawBayeux:
    bayeux = RawBayeux(fake.url, websocket=websocket)
    await bayeux.handshake()
    return bayeux


async def test_only_the_nth_connect_gets_http_503(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", http_status(503), nth=3)
    async with await started(fake_bayeux) as bayeux:
        assert (await bayeux.connect(advice_timeout=0))["successful"]
        assert (await bayeux.connect(advice_timeout=0))["successful"]
        with pytest.raises(AssertionError, match="HTTP 503"):
            await bayeux.connect(advice_timeout=0)
        assert (await bayeux.connect(advice_timeout=0))["successful"]
    assert fake_bayeux.count("/meta/connect") == 4


async def test_http_error_on_websocket_closes_the_socket(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", http_status(500), nth=1)
    async with await started(fake_bayeux, websocket=True) as bayeux:
        with pytest.raises(WebSocketClosedError):
            await bayeux.connect(advice_timeout=0)
        assert (await bayeux.connect(advice_timeout=0))["successful"]


@pytest.mark.parametrize(
    "body", [b"{definitely not json", b'{"hello": "world"}', b"[1, 2, 3]", b""]
)
async def test_raw_bodies_are_sent_verbatim(fake_bayeux: FakeBayeux, body: bytes) -> None:
    fake_bayeux.on("/meta/connect", raw_body(body), nth=1)
    async with (
        await started(fake_bayeux) as bayeux,
        bayeux._session.post(
            fake_bayeux.url,
            json=[
                {
                    "channel": "/meta/connect",
                    "clientId": bayeux.client_id,
                    "id": "9",
                    "connectionType": "long-polling",
                }
            ],
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == body


async def test_connect_reply_without_advice(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", drop_advice())
    async with await started(fake_bayeux) as bayeux:
        for _ in range(2):
            reply = await bayeux.connect(advice_timeout=0)
            assert reply["successful"] is True
            assert "advice" not in reply


async def test_successful_connect_with_reconnect_none_and_server_disconnect(
    fake_bayeux: FakeBayeux,
) -> None:
    fake_bayeux.on("/meta/connect", patch_reply(advice={"reconnect": "none"}), nth=2)
    fake_bayeux.on("/meta/connect", server_disconnect(), nth=2)
    async with await started(fake_bayeux) as bayeux:
        await bayeux.connect(advice_timeout=0)
        received = await bayeux.exchange(
            [
                {
                    "channel": "/meta/connect",
                    "connectionType": "long-polling",
                    "advice": {"timeout": 0},
                }
            ]
        )
    assert received[0]["successful"] is True
    assert received[0]["advice"] == {"reconnect": "none"}
    assert received[1] == {"channel": "/meta/disconnect", "successful": True}


async def test_stale_and_duplicate_connect_replies(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", stale_connect_reply(), nth=1)
    fake_bayeux.on("/meta/connect", duplicate_reply(), nth=2)
    async with await started(fake_bayeux) as bayeux:
        first = await bayeux.exchange(
            [
                {
                    "channel": "/meta/connect",
                    "connectionType": "long-polling",
                    "id": "c1",
                    "advice": {"timeout": 0},
                }
            ]
        )
        second = await bayeux.exchange(
            [
                {
                    "channel": "/meta/connect",
                    "connectionType": "long-polling",
                    "id": "c2",
                    "advice": {"timeout": 0},
                }
            ]
        )
    assert [r["id"] for r in first] == ["stale-c1", "c1"]
    assert [r["id"] for r in second] == ["c2", "c2"]


@pytest.mark.parametrize(
    ("error", "reconnect"),
    [
        ("402::session_unknown", "handshake"),
        (SALESFORCE_UNKNOWN_CLIENT, "handshake"),
        (AUTH_INVALID, "none"),
        ("403::Organization total events daily limit exceeded", None),
    ],
)
async def test_scripted_failure_replies(
    fake_bayeux: FakeBayeux, error: str, reconnect: str | None
) -> None:
    fake_bayeux.on("/meta/connect", fail_reply(error, reconnect=reconnect), nth=1)
    async with await started(fake_bayeux) as bayeux:
        reply = await bayeux.connect(advice_timeout=0)
    assert reply["successful"] is False
    assert reply["error"] == error
    if reconnect is not None:
        assert reply["advice"]["reconnect"] == reconnect


async def test_handshake_denied_with_salesforce_failure_reason(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/handshake", handshake_denied(SFDC_CONCURRENT_LIMIT), nth=1)
    async with RawBayeux(fake_bayeux.url) as bayeux:
        denied = await bayeux.handshake()
        accepted = await bayeux.handshake()
    assert denied["successful"] is False
    assert denied["error"] == "403::Handshake denied"
    assert denied["ext"]["sfdc"]["failureReason"] == SFDC_CONCURRENT_LIMIT
    assert denied["id"] == "1"
    assert accepted["successful"] is True
    assert fake_bayeux.stats()["sessions"] == 1


async def test_multiple_clients_advice(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", multiple_clients(), nth=1)
    async with await started(fake_bayeux) as bayeux:
        reply = await bayeux.connect(advice_timeout=0)
    assert reply["advice"]["multiple-clients"] is True


async def test_oversize_event_is_delivered_as_is(fake_bayeux: FakeBayeux) -> None:
    big = {"channel": "/big", "id": "big-1", "data": {"pad": "x" * (2 << 20)}}
    fake_bayeux.on("/meta/connect", append_messages(big), nth=1)
    async with await started(fake_bayeux) as bayeux:
        await bayeux.connect(advice_timeout=0)
    assert len(bayeux.events[0]["data"]["pad"]) == 2 << 20


async def test_delay_answers_late_but_normally(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/subscribe", delay(0.05), nth=1)
    async with await started(fake_bayeux) as bayeux:
        assert (await bayeux.subscribe("/slow"))["successful"]


async def test_a_hook_can_hold_a_request_until_released(fake_bayeux: FakeBayeux) -> None:
    release = asyncio.Event()

    async def wait_for_release(exchange: object, message: object) -> None:
        await release.wait()

    fake_bayeux.on("/meta/subscribe", Action(before=wait_for_release), nth=1)
    async with await started(fake_bayeux) as bayeux:
        async with asyncio.timeout(10):
            pending = asyncio.create_task(bayeux.subscribe("/slow"))
            await fake_bayeux.wait_for("/meta/subscribe", 1)
            assert not pending.done()
            release.set()
            assert (await pending)["successful"]


async def test_request_log_counts_per_channel_over_time(fake_bayeux: FakeBayeux) -> None:
    async with await started(fake_bayeux) as bayeux:
        before = time.monotonic()
        for _ in range(5):
            await bayeux.connect(advice_timeout=0)
        after = time.monotonic()
    assert fake_bayeux.count("/meta/handshake") == 1
    assert fake_bayeux.count("/meta/connect", since=before, until=after) == 5
    assert fake_bayeux.count("/meta/connect", until=before) == 0
    assert [m["id"] for m in fake_bayeux.messages("/meta/connect")] == ["2", "3", "4", "5", "6"]


async def test_rules_can_fire_a_limited_number_of_times(fake_bayeux: FakeBayeux) -> None:
    fake_bayeux.on("/meta/connect", http_status(503), times=2)
    async with await started(fake_bayeux) as bayeux:
        for _ in range(2):
            with pytest.raises(AssertionError, match="HTTP 503"):
                await bayeux.connect(advice_timeout=0)
        assert (await bayeux.connect(advice_timeout=0))["successful"]
        fake_bayeux.clear_rules()


async def test_fake_still_serves_real_messages(fake_bayeux: FakeBayeux) -> None:
    async with await started(fake_bayeux, websocket=True) as bayeux:
        await bayeux.connect(advice_timeout=0)
        await bayeux.subscribe("/ok")
        fake_bayeux.publish("/ok", {"n": 1})
        async with asyncio.timeout(10):
            events = await bayeux.collect("/ok", 1)
    assert events[0]["data"] == {"n": 1}
