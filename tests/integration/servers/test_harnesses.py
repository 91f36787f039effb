"""The npm test servers and their control API, driven with raw Bayeux (no client library)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures import servers
from tests.fixtures.raw_bayeux import RawBayeux, WebSocketClosedError
from tests.fixtures.servers import NodeBayeuxServer, NodeServerFactory, ServerKind


pytestmark = pytest.mark.integration

# Unknown-session errors differ per server (see issue 3).
UNKNOWN_SESSION = {"cometd": "402::session_unknown", "faye": "Unknown client"}


def raw(server: NodeBayeuxServer, **kwargs: object) -> RawBayeux:
    return RawBayeux(server.url, websocket=server.connection_type == "websocket", **kwargs)  # type: ignore[arg-type]


async def test_handshake_advertises_transports(bayeux_server: NodeBayeuxServer) -> None:
    async with raw(bayeux_server) as bayeux:
        reply = await bayeux.handshake()
    assert reply["successful"] is True
    assert bayeux_server.connection_type in reply["supportedConnectionTypes"]
    assert reply["advice"]["timeout"] == 2000
    if bayeux_server.kind == "cometd":
        assert "websocket" not in reply["supportedConnectionTypes"]


async def test_every_published_message_arrives_once_in_order(
    bayeux_server: NodeBayeuxServer,
) -> None:
    count = 3000
    async with raw(bayeux_server) as bayeux:
        assert (await bayeux.handshake())["successful"]
        assert (await bayeux.connect(advice_timeout=0))["successful"]
        assert (await bayeux.subscribe("/load/a"))["successful"]
        stats = await bayeux_server.stats()
        assert stats["sessions"] == 1
        assert stats["subscriptions"] == {"/load/a": 1}

        async with asyncio.timeout(60):
            collecting = asyncio.create_task(bayeux.collect("/load/a", count))
            result = await bayeux_server.publish("/load/a", count, size=64)
            events = await collecting

    assert result == {"channel": "/load/a", "published": count, "first_seq": 1, "last_seq": count}
    assert [e["data"]["seq"] for e in events] == list(range(1, count + 1))
    assert events[0]["data"]["pad"] == "x" * 64
    assert isinstance(events[0]["data"]["ts"], int)
    assert (await bayeux_server.stats())["published_per_channel"] == {"/load/a": count}


async def test_sequence_continues_across_publish_calls(cometd_server: NodeBayeuxServer) -> None:
    first = await cometd_server.publish("/seq", 3)
    second = await cometd_server.publish("/seq", 2, rate=1000)
    assert (first["first_seq"], first["last_seq"]) == (1, 3)
    assert (second["first_seq"], second["last_seq"]) == (4, 5)
    assert (await cometd_server.stats())["published"] == 5


async def test_drop_sessions_makes_the_session_unknown(bayeux_server: NodeBayeuxServer) -> None:
    async with raw(bayeux_server) as bayeux:
        await bayeux.handshake()
        assert (await bayeux.connect(advice_timeout=0))["successful"]
        assert (await bayeux.subscribe("/x"))["successful"]
        # A connect is held meanwhile: dropping must answer it, not leave it hanging.
        async with asyncio.timeout(30):
            held = asyncio.create_task(bayeux.connect())
            await bayeux_server.wait_for_held_connects(1)
            assert await bayeux_server.drop_sessions() == 1
            if bayeux.websocket:
                # Faye closes the client's socket when it destroys the client.
                with pytest.raises(WebSocketClosedError):
                    await held
            else:
                assert (await held)["successful"] is True
            reply = await bayeux.connect()
    assert reply["successful"] is False
    assert UNKNOWN_SESSION[bayeux_server.kind] in reply["error"]
    assert reply["advice"]["reconnect"] == "handshake"
    stats = await bayeux_server.stats()
    assert stats["sessions"] == 0
    assert stats["subscriptions"] == {}


async def test_restart_keeps_the_port_and_forgets_sessions(
    bayeux_server: NodeBayeuxServer,
) -> None:
    port = bayeux_server.port
    async with raw(bayeux_server) as bayeux:
        await bayeux.handshake()
        old_client_id = bayeux.client_id
        await bayeux_server.restart()
        assert bayeux_server.port == port
        if bayeux.websocket:
            await bayeux.close()
            bayeux = raw(bayeux_server)
            bayeux.client_id = old_client_id
        async with bayeux:
            reply = await bayeux.connect(advice_timeout=0)
            assert reply["successful"] is False
            assert UNKNOWN_SESSION[bayeux_server.kind] in reply["error"]
            assert (await bayeux.handshake())["successful"]
            assert bayeux.client_id != old_client_id


@pytest.mark.parametrize("kind", ["cometd", "faye"])
async def test_auth_mode_rejects_wrong_and_expired_tokens(
    node_server_factory: NodeServerFactory, kind: ServerKind
) -> None:
    server = node_server_factory(kind)
    await server.set_auth("require", token="good", expired=["old"])

    for headers, ext in [({}, None), ({"Authorization": "Bearer old"}, None), ({}, "bad")]:
        async with RawBayeux(server.url, headers=headers) as bayeux:
            fields = {"ext": {"auth": {"token": ext}}} if ext else {}
            reply = await bayeux.handshake(**fields)
        assert reply["successful"] is False, (headers, ext)
        assert reply["error"] == "401::Authentication invalid"
        assert reply["advice"]["reconnect"] == "none"

    async with RawBayeux(server.url, headers={"Authorization": "Bearer good"}) as bayeux:
        assert (await bayeux.handshake())["successful"]
        assert (await bayeux.connect(advice_timeout=0))["successful"]
    async with RawBayeux(server.url) as bayeux:
        assert (await bayeux.handshake(ext={"auth": {"token": "good"}}))["successful"]
        assert (await bayeux.connect(advice_timeout=0, ext={"auth": {"token": "good"}}))[
            "successful"
        ]

        # The token is rotated: the next connect is refused and the session is gone.
        await server.set_auth("require", token="new", expired=["good"])
        before = (await server.stats())["sessions"]
        reply = await bayeux.connect(advice_timeout=0, ext={"auth": {"token": "good"}})
        assert reply["successful"] is False
        assert reply["error"] == "401::Authentication invalid"
        assert reply["advice"]["reconnect"] == "none"
    assert (await server.stats())["sessions"] == before - 1

    await server.set_auth("off")
    async with RawBayeux(server.url) as bayeux:
        assert (await bayeux.handshake())["successful"]


def test_missing_node_modules_says_to_run_make_node_deps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(servers, "NODE_MODULES", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="make node-deps"):
        servers.require_node_deps()
