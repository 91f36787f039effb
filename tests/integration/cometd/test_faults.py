"""Faults the real servers cannot be made to produce, against the scriptable fake server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from bridge.cometd import (
    AuthExtension,
    Client,
    ClientInvalidOperation,
    ConnectionType,
    ServerError,
    TransportConnectionClosed,
    TransportTimeoutError,
    events,
)
from tests.fakes.fake_bayeux import (
    AUTH_INVALID,
    SALESFORCE_UNKNOWN_CLIENT,
    SFDC_CONCURRENT_LIMIT,
    FakeBayeux,
    append_messages,
    drop_advice,
    fail_reply,
    handshake_denied,
    http_status,
    patch_reply,
    raw_body,
    replace_replies,
    server_disconnect,
    stale_connect_reply,
)

from .conftest import WAIT, Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/fake/stream"
TRANSPORTS = [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET]


def make_client(
    fake: FakeBayeux, recorder: Recorder, transport: ConnectionType, **kw: Any
) -> Client:
    kw.setdefault("connection_timeout", 15.0)
    return Client(fake.url, transport, listener=recorder, **kw)


async def publish_and_receive(fake: FakeBayeux, client: Client, count: int) -> list[int]:
    for n in range(count):
        fake.publish(CHANNEL, {"n": n})
    got: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got.extend(m["data"]["n"] for m in await client.receive_many(count))
    return got


async def drain_until_error(client: Client) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            await client.receive()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cookie_jar_works_on_ip_literal_host(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    # The fixture's fake requires its BAYEUX_BROWSER cookie on every request (as
    # cometd-nodejs-server does); without the cookie every connect would be unknown_session.
    async with make_client(fake_bayeux, recorder, transport) as client:
        await client.subscribe(CHANNEL)
        assert await publish_and_receive(fake_bayeux, client, 10) == list(range(10))
    assert recorder.count(events.Handshaken) == 1
    # The first connect after the handshake asks for an immediate reply; later ones do not.
    connects = fake_bayeux.messages("/meta/connect")
    assert connects[0]["advice"] == {"timeout": 0}
    assert all("advice" not in c for c in connects[1:])
    assert len({c["id"] for c in connects}) == len(connects)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_successful_connect_with_reconnect_none_closes(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    async with make_client(fake_bayeux, recorder, transport) as client:
        await client.subscribe(CHANNEL)
        await fake_bayeux.wait_for("/meta/connect", 2)
        fake_bayeux.on("/meta/connect", patch_reply(advice={"reconnect": "none"}))
        fake_bayeux.publish(CHANNEL, {"n": 1})  # releases the held connect
        async with asyncio.timeout(WAIT):
            assert (await client.receive())["data"] == {"n": 1}  # buffered data first
            with pytest.raises(ServerError, match="Connection closed by the server"):
                await client.receive()
        assert client.closed
        with pytest.raises(ClientInvalidOperation):
            await client.receive()
    assert recorder.count(events.ServerClosed) == 1
    assert recorder.count(events.Handshaken) == 1  # no re-handshake against the advice


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", ["session", "bare_message"])
async def test_unsolicited_meta_disconnect_closes(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType, how: str
) -> None:
    async with make_client(fake_bayeux, recorder, transport) as client:
        await client.subscribe(CHANNEL)
        assert client.client_id is not None
        if how == "session":  # CometD: connect reply with reconnect none + /meta/disconnect
            fake_bayeux.disconnect_session(client.client_id)
        else:  # only the unsolicited /meta/disconnect, after a normal connect reply
            count = fake_bayeux.count("/meta/connect")
            fake_bayeux.on("/meta/connect", server_disconnect(), nth=count + 1)
            fake_bayeux.publish(CHANNEL, {"n": 1})
        with pytest.raises(ServerError) as caught:
            await drain_until_error(client)
        assert "closed by the server" in str(caught.value)
    assert len(fake_bayeux.messages("/meta/handshake")) == 1
    assert recorder.count(events.ServerClosed) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stale_and_duplicate_connect_replies_are_discarded(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    fake_bayeux.on("/meta/connect", stale_connect_reply())
    async with make_client(fake_bayeux, recorder, transport) as client:
        await client.subscribe(CHANNEL)
        assert await publish_and_receive(fake_bayeux, client, 20) == list(range(20))
        assert client.pending_count == 0
    assert recorder.count(events.Reconnecting) == 0


@pytest.mark.parametrize(
    ("action", "reason", "skipped"),
    [
        (http_status(503), "http_error", None),
        (raw_body(b"this is not json"), "malformed", "invalid_json"),
        (raw_body(b'[1, {"no": "channel"}]'), "malformed", "not_bayeux"),
        (raw_body(b'"a string"'), "malformed", "not_bayeux"),
        (raw_body(b"[]", content_type="text/html"), "malformed", None),
    ],
)
async def test_bad_responses_are_typed_and_recovered_from(
    fake_bayeux: FakeBayeux,
    recorder: Recorder,
    action: Any,
    reason: str,
    skipped: str | None,
) -> None:
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING) as client:
        await client.subscribe(CHANNEL)
        count = fake_bayeux.count("/meta/connect")
        fake_bayeux.on("/meta/connect", action, nth=count + 1)
        fake_bayeux.publish(CHANNEL, {"n": -1})  # release the held connect
        await recorder.wait_count(events.Connected, 2)
        assert [e.reason for e in recorder.of(events.Reconnecting)] == [reason]
        assert recorder.of(events.Reconnecting)[0].delay > 0
        if skipped is not None:
            assert skipped in {e.reason for e in recorder.of(events.MessageSkipped)}
        got = await publish_and_receive(fake_bayeux, client, 5)
        assert got[-5:] == list(range(5))


async def test_http_error_on_websocket_reconnects(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    async with make_client(fake_bayeux, recorder, ConnectionType.WEBSOCKET) as client:
        await client.subscribe(CHANNEL)
        count = fake_bayeux.count("/meta/connect")
        fake_bayeux.on("/meta/connect", http_status(500), nth=count + 1)
        fake_bayeux.publish(CHANNEL, {"n": -1})
        await recorder.wait_count(events.Connected, 2)
        got = await publish_and_receive(fake_bayeux, client, 5)
        assert got[-5:] == list(range(5))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_oversize_message_skipped_others_delivered(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    async with make_client(fake_bayeux, recorder, transport, max_message_size=2000) as client:
        await client.subscribe(CHANNEL)
        await fake_bayeux.wait_for("/meta/connect", 2)
        fake_bayeux.publish(CHANNEL, {"n": 0})
        fake_bayeux.publish(CHANNEL, {"n": 1, "pad": "x" * 5000})
        fake_bayeux.publish(CHANNEL, {"n": 2})
        got: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(got) < 2:
                got.extend(m["data"]["n"] for m in await client.receive_many(10))
        assert got == [0, 2]
        assert [e.reason for e in recorder.of(events.MessageSkipped)] == ["oversize"]


async def test_a_long_poll_response_over_max_response_size_is_streamed_not_refused(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    # A long-poll response is decoded as it streams in, within the prefetch bound: its total
    # size is no reason to fail it (a server re-sending a large backlog would never get
    # through); each message stays capped by max_message_size.
    client = make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, max_response_size=3000)
    async with client:
        await client.subscribe(CHANNEL)
        fake_bayeux.publish(CHANNEL, {"pad": "x" * 5000})
        async with asyncio.timeout(WAIT):
            message = await client.receive()
        assert message["data"] == {"pad": "x" * 5000}
        assert recorder.count(events.Reconnecting) == 0


async def test_failures_without_advice_back_off_then_escalate_to_handshake(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    # maxInterval comes only with the handshake; later advice without it must not erase it.
    handshake_advice = {"reconnect": "retry", "interval": 0, "timeout": 1000, "maxInterval": 500}
    fake_bayeux.on("/meta/handshake", patch_reply(advice=handshake_advice), nth=1)
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING) as client:
        await client.subscribe(CHANNEL)
        count = fake_bayeux.count("/meta/connect")
        fake_bayeux.on("/meta/connect", fail_reply("500::boom"), nth=count + 1, times=1000)
        fake_bayeux.on("/meta/connect", drop_advice(), nth=count + 1, times=1000)
        fake_bayeux.publish(CHANNEL, {"n": -1})
        # timeout (1 s) + interval (0) + maxInterval (0.5 s) without a successful connect:
        # straight to a handshake.
        await recorder.wait(
            lambda: any(e.reason == "max_interval" for e in recorder.of(events.Reconnecting))
        )
        fake_bayeux.clear_rules()
        await recorder.wait_count(events.Connected, 2)
        retries = [e for e in recorder.of(events.Reconnecting) if e.reason == "server_advice"]
        assert retries
        assert all(e.delay > 0 for e in retries)  # never a hot loop
        delays = [e.delay for e in retries]
        assert max(delays) > min(delays)  # the backoff grows
        assert client.subscriptions == {CHANNEL}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_salesforce_unknown_client_rehandshakes_without_authenticate(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    auth = CountingAuth()
    async with make_client(fake_bayeux, recorder, transport, auth=auth) as client:
        await client.subscribe(CHANNEL)
        count = fake_bayeux.count("/meta/connect")
        fake_bayeux.on(
            "/meta/connect",
            fail_reply(SALESFORCE_UNKNOWN_CLIENT, reconnect="handshake"),
            nth=count + 1,
        )
        fake_bayeux.publish(CHANNEL, {"n": -1})
        await recorder.wait_count(events.Connected, 2)
        assert [e.reason for e in recorder.of(events.Reconnecting)] == ["unknown_session"]
        got = await publish_and_receive(fake_bayeux, client, 3)
        assert got[-3:] == [0, 1, 2]
    assert auth.calls == 0


class CountingAuth(AuthExtension):
    def __init__(self) -> None:
        self.calls = 0

    async def outgoing(self, payload: list[dict[str, Any]], headers: Any) -> None:
        return None

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        return None

    async def authenticate(self) -> None:
        self.calls += 1


async def test_auth_failure_with_reconnect_none_authenticates_and_handshakes_fresh(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    auth = CountingAuth()
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, auth=auth) as c:
        await c.subscribe(CHANNEL)
        count = fake_bayeux.count("/meta/connect")
        fake_bayeux.on("/meta/connect", fail_reply(AUTH_INVALID, reconnect="none"), nth=count + 1)
        fake_bayeux.publish(CHANNEL, {"n": -1})
        await recorder.wait_count(events.Connected, 2)
        assert auth.calls == 1
        assert len(fake_bayeux.messages("/meta/handshake")) == 2
        assert [e.reason for e in recorder.of(events.Reconnecting)] == ["auth"]


async def test_handshake_denied_for_auth_reason_authenticates_in_open(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    fake_bayeux.on("/meta/handshake", handshake_denied("401::Authentication invalid"), nth=1)
    auth = CountingAuth()
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, auth=auth) as c:
        assert c.client_id is not None
    assert auth.calls == 1


async def test_quota_denied_handshake_raises_with_parsed_error(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    fake_bayeux.on("/meta/handshake", handshake_denied(SFDC_CONCURRENT_LIMIT))
    client = make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, auth=CountingAuth())
    with pytest.raises(ServerError) as caught:
        await client.open()
    assert caught.value.error_code == 403
    assert caught.value.error_message == "Handshake denied"
    assert client.closed


async def test_buffer_full_session_expiry_is_reported_and_resubscribed(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    async with make_client(
        fake_bayeux, recorder, ConnectionType.LONG_POLLING, max_pending_count=3
    ) as client:
        await client.subscribe(CHANNEL)
        await fake_bayeux.wait_for("/meta/connect", 2)
        for n in range(5):
            fake_bayeux.publish(CHANNEL, {"n": n})
        await recorder.wait_count(events.FetchPaused, 1)
        fake_bayeux.drop_sessions()  # the server forgets us while we do not poll
        got: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(got) < 5:
                got += [m["data"]["n"] for m in await client.receive_many(10)]
                assert client.pending_count <= 3
        # Everything the server sent before it forgot us is kept (the rest of the held
        # response was waiting in the socket).
        assert got == [0, 1, 2, 3, 4]
        await recorder.wait_count(events.Connected, 2)
        assert "buffer_full" in [e.reason for e in recorder.of(events.Reconnecting)]
        assert client.subscriptions == {CHANNEL}


async def test_failed_resubscription_is_raised_from_receive(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING) as client:
        await client.subscribe(CHANNEL)
        await client.subscribe("/fake/other")
        fake_bayeux.on("/meta/subscribe", fail_reply("403:x:replay id invalid"), nth=4)
        fake_bayeux.drop_sessions()
        fake_bayeux.publish(CHANNEL, {"n": -1})
        with pytest.raises(ServerError) as caught:
            async with asyncio.timeout(WAIT):
                await client.receive()
        assert caught.value.error_code == 403
        assert client.subscriptions == {CHANNEL}
        assert [e.channel for e in recorder.of(events.SubscriptionFailed)] == ["/fake/other"]
        assert not client.closed


async def test_publish_reply_without_id_and_x_messages(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    fake_bayeux.on(CHANNEL, patch_reply(remove=["id"]))
    fake_bayeux.on(
        "/meta/handshake",
        append_messages({"channel": CHANNEL, "data": {"n": "early"}}),
        nth=1,
    )
    fake_bayeux.on("/meta/handshake", patch_reply(**{"x-messages": 1}), nth=1)
    # A server-side delivery (no subscription of ours): only taken when asked for.
    client = make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, only_subscribed=False)
    async with client:
        assert client.pending_count == 1  # delivered with the handshake, before any connect
        assert (await client.receive())["data"] == {"n": "early"}
        reply = await client.publish(CHANNEL, {"n": 1})
        assert reply["successful"] is True
        assert "id" not in reply


async def test_listener_errors_never_kill_the_client(fake_bayeux: FakeBayeux) -> None:
    def broken(event: events.ClientEvent) -> None:
        raise RuntimeError("listener bug")

    async with Client(fake_bayeux.url, listener=broken) as client:
        await client.subscribe(CHANNEL)
        fake_bayeux.publish(CHANNEL, {"n": 1})
        async with asyncio.timeout(WAIT):
            assert (await client.receive())["data"] == {"n": 1}


class NoUpgrade(FakeBayeux):
    """Offers websocket in the handshake but refuses the upgrade."""

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="no websocket here\n")


async def test_refused_websocket_upgrade_falls_back_to_long_polling(recorder: Recorder) -> None:
    server = NoUpgrade(timeout_ms=1000)
    await server.start()
    try:
        async with Client(server.url, listener=recorder) as client:
            assert client.connection_type is ConnectionType.LONG_POLLING
            await client.subscribe(CHANNEL)
            server.publish(CHANNEL, {"n": 1})
            async with asyncio.timeout(WAIT):
                assert (await client.receive())["data"] == {"n": 1}
        assert [e.reason for e in recorder.of(events.Reconnecting)] == ["transport_fallback"]
        websocket_only = Client(server.url, ConnectionType.WEBSOCKET, connection_timeout=1)
        with pytest.raises(TransportConnectionClosed, match="upgrade refused"):
            await websocket_only.open()
    finally:
        await server.stop()


async def test_async_iteration_stops_when_closed(fake_bayeux: FakeBayeux) -> None:
    client = Client(fake_bayeux.url)
    await client.open()
    await client.subscribe(CHANNEL)
    fake_bayeux.publish(CHANNEL, {"n": 1})
    received = []
    async with asyncio.timeout(WAIT):
        async for message in client:
            received.append(message)
            await client.close()
    assert [m["data"] for m in received] == [{"n": 1}]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_publish_and_subscribe_do_not_wait_for_the_held_poll(
    recorder: Recorder, transport: ConnectionType
) -> None:
    server = FakeBayeux(timeout_ms=60_000)  # the poll is held for a minute
    await server.start()
    try:
        async with Client(server.url, transport, listener=recorder) as client:
            await server.wait_for("/meta/connect", 2)
            async with asyncio.timeout(WAIT):
                while server.stats()["held_connects"] < 1:
                    await server.wait_for("/meta/connect", 2)
            await client.subscribe(CHANNEL)
            reply = await client.publish("/fake/elsewhere", {"n": 1})
            assert reply["successful"] is True
            # Both answered while the same poll is still parked on the server.
            assert server.stats()["held_connects"] == 1
            assert server.count("/meta/connect") == 2
    finally:
        await server.stop()


async def test_websocket_reply_deadline_is_per_message(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    # The server swallows publishes to one channel: that publish times out on its own
    # deadline while the session (and its held poll on the same socket) carries on.
    fake_bayeux.on("/fake/void", replace_replies([]))
    client = make_client(fake_bayeux, recorder, ConnectionType.WEBSOCKET, network_delay=0.5)
    async with client:
        await client.subscribe(CHANNEL)
        with pytest.raises(TransportTimeoutError):
            await client.publish("/fake/void", {"n": 0})
        assert await publish_and_receive(fake_bayeux, client, 3) == [0, 1, 2]
        assert recorder.count(events.Reconnecting) == 0


async def test_pending_bytes_bound_pauses_fetching(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    client = make_client(
        fake_bayeux,
        recorder,
        ConnectionType.LONG_POLLING,
        max_pending_count=1000,
        max_pending_bytes=2000,
    )
    async with client:
        await client.subscribe(CHANNEL)
        await fake_bayeux.wait_for("/meta/connect", 2)
        for n in range(10):
            fake_bayeux.publish(CHANNEL, {"n": n, "pad": "x" * 500})
        await recorder.wait_count(events.FetchPaused, 1)
        # The byte bound holds (each message is ~540 bytes), far below the count bound.
        assert 0 < client.pending_count <= 3
        assert 1000 < client.pending_bytes <= 2000
        got: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(got) < 10:
                got += [m["data"]["n"] for m in await client.receive_many(100)]
                assert client.pending_bytes <= 2000
        assert got == list(range(10))
        assert client.pending_bytes == 0
        await recorder.wait_count(events.FetchResumed, 1)
