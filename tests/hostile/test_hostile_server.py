"""The client against a hostile Bayeux server: the scriptable fake driven by hypothesis.

Each example starts a fake server, scripts what it answers (random advice values: 0,
negative, huge, NaN, infinity, wrong types; random reply shapes; instant answers; truncated,
non-UTF-8, deeply nested, oversize bodies; HTTP errors; events on channels nobody subscribed
to), runs a client against it for about a second, and checks one property:

- the request rate is bounded: after 1 s, at most 10 ``/meta/connect`` per second when
  replies come back at once and empty, plus at most 2 handshakes per second;
- the client's task never crashes (only the server may end a session: ``reconnect: none``);
- the client never stalls silently: an event published is received, or ``receive()`` says
  the connection is gone (``TransportTimeoutError``) within ``connection_timeout``;
- every well-formed data message in a reply is delivered exactly once (per session).

Example counts are small: the four properties run in about 30 s together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from bridge.cometd import (
    Client,
    ClientError,
    ConnectionType,
    ServerError,
    TransportTimeoutError,
)
from bridge.cometd.ext.ack import AckExtension
from bridge.cometd.extensions import Extension, Headers, Payload
from bridge.demo.bayeux_server import Exchange
from tests.fakes.fake_bayeux import Action, FakeBayeux, patch_reply


pytestmark = pytest.mark.integration

CHANNEL = "/hostile/stream"
MAX_RESPONSE = 64 * 1024
CONNECTION_TIMEOUT = 1.0
WAIT = 20.0  # bound of any wait in an example (a busy 2-core machine)

EXAMPLES = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- strategies ---------------------------------------------------------------------------------

_nasty_number = st.one_of(
    st.just(0),
    st.integers(-(10**6), -1),
    st.integers(10**9, 10**30),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e15, -0.0]),
    st.floats(0, 2000),
)
_wrong_type = st.one_of(
    st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
)
advice_value = st.one_of(_nasty_number, _wrong_type)


def advice(*, reconnect: list[object], value: st.SearchStrategy[object] = advice_value) -> Any:
    return st.fixed_dictionaries(
        {},
        optional={
            "interval": value,
            "timeout": value,
            "maxInterval": value,
            "reconnect": st.sampled_from(reconnect),
            "multiple-clients": st.booleans(),
        },
    )


FAULTS = [
    "normal",
    "instant_empty",
    "truncated",
    "non_utf8",
    "not_json",
    "not_a_list",
    "deep",
    "oversize",
    "unsolicited",
    "http_500",
    "slow",
    "bad_advice",
]
fault_scripts = st.lists(st.sampled_from(FAULTS), min_size=1, max_size=8)


# -- the scripted server ------------------------------------------------------------------------

DEEP = '{"channel": "' + CHANNEL + '", "data": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"


def _with_items(exchange: Exchange, items: list[str]) -> bytes:
    """The exchange's replies followed by raw JSON ``items`` (some not encodable by json)."""
    body = json.dumps(exchange.replies)
    if not items:
        return body.encode()
    inner = body[1:-1]
    return ("[" + ", ".join([inner, *items] if inner else items) + "]").encode()


class Script:
    """Answers the n-th ``/meta/connect`` with ``faults[n]`` (then normally, or cycling)."""

    def __init__(
        self, fake: FakeBayeux, faults: list[str], connect_advice: dict[str, Any], cycle: bool
    ) -> None:
        self.fake = fake
        self.faults = faults
        self.advice = connect_advice
        self.cycle = cycle
        self.served = 0
        self._current: dict[int, str] = {}
        self._batches = iter(range(1, 10**9))

    def next_fault(self) -> str:
        # The first connect is the one inside open(), which raises on a failure (by design).
        n = self.served - 1
        self.served += 1
        if n < 0:
            return "open"
        if n < len(self.faults):
            return self.faults[n]
        return self.faults[n % len(self.faults)] if self.cycle else "normal"

    def action(self) -> Action:
        return Action(before=self.before, after=self.after, name="script")

    async def before(self, exchange: Exchange, message: dict[str, Any]) -> None:
        fault = self.next_fault()
        self._current[id(exchange)] = fault
        if fault == "http_500":
            exchange.handled = True
            exchange.status = 500
            exchange.raw_body = b"boom"
            exchange.content_type = "text/plain"
            exchange.close = True
        elif fault == "slow":
            await asyncio.sleep(0.3)  # a slow server, part of the script

    async def after(self, exchange: Exchange, message: dict[str, Any]) -> None:
        fault = self._current.pop(id(exchange), "normal")
        if fault == "open":
            return
        for reply in exchange.replies:
            if reply.get("channel") == "/meta/connect":
                # The ack extension's batch (ignored by a client without it).
                reply["ext"] = {"ack": next(self._batches)}
                if self.advice:
                    reply["advice"] = dict(self.advice)
        if fault == "truncated":
            full = json.dumps(exchange.replies).encode()
            exchange.raw_body = full[: max(1, len(full) // 2)]
        elif fault == "non_utf8":
            exchange.raw_body = b'[{"channel": "\xff\xfe"}]'
        elif fault == "not_json":
            exchange.raw_body = b"{not json"
        elif fault == "not_a_list":
            exchange.raw_body = b'"a string"'
        elif fault == "deep":
            exchange.raw_body = _with_items(exchange, [DEEP])
        elif fault == "oversize":
            pad = json.dumps({"channel": CHANNEL, "data": {"pad": "x" * (MAX_RESPONSE * 2)}})
            exchange.raw_body = _with_items(exchange, [pad])
        elif fault == "unsolicited":
            stray = json.dumps({"channel": "/not/subscribed", "data": {"n": -1}})
            exchange.raw_body = _with_items(exchange, [stray])
        elif fault == "bad_advice":
            for reply in exchange.replies:
                reply["advice"] = {"interval": math.nan, "timeout": "soon", "reconnect": 7}
            exchange.raw_body = _with_items(exchange, [])


async def started_fake(timeout_ms: int) -> FakeBayeux:
    fake = FakeBayeux(timeout_ms=timeout_ms, interval_ms=0, max_interval_ms=2000)
    await fake.start()
    return fake


def client_for(
    fake: FakeBayeux, transport: ConnectionType = ConnectionType.LONG_POLLING, **kw: Any
) -> Client:
    return Client(
        fake.url,
        transport,
        connection_timeout=CONNECTION_TIMEOUT,
        max_response_size=MAX_RESPONSE,
        json_loads=orjson.loads,
        network_delay=2.0,
        **kw,
    )


class FailsOnData(Extension):
    """An extension with a bug: it raises on every payload with a data message."""

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        return None

    async def incoming(self, payload: Payload, headers: Any = None) -> None:
        if any("data" in m for m in payload):
            raise RuntimeError("extension bug")


@contextmanager
def task_failures() -> Iterator[list[logging.LogRecord]]:
    """Records the client's "task failed" log lines (how a crashed task reports itself)."""
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "task failed" in record.getMessage():
                records.append(record)

    handler = Catch(logging.ERROR)
    logger = logging.getLogger("bridge.cometd.client")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# -- properties -----------------------------------------------------------------------------------


@EXAMPLES
@given(
    connect_advice=advice(reconnect=["retry", "handshake", "bogus", 1]),
    transport=st.sampled_from([ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET]),
)
@example(
    connect_advice={"reconnect": "handshake", "interval": 0}, transport=ConnectionType.LONG_POLLING
)
def test_request_rate_is_bounded_whatever_the_advice(
    connect_advice: dict[str, Any], transport: ConnectionType
) -> None:
    async def scenario() -> None:
        fake = await started_fake(timeout_ms=0)  # never holds: every reply instant and empty
        script = Script(fake, ["normal"], connect_advice, cycle=True)
        fake.on("/meta/connect", script.action())
        try:
            async with client_for(fake, transport) as client:
                await client.subscribe(CHANNEL)
                await asyncio.sleep(1.0)  # the ramp-up second, then a window to count in
                start = time.monotonic()
                await asyncio.sleep(1.5)
                connects = fake.count("/meta/connect", since=start)
                handshakes = fake.count("/meta/handshake", since=start)
        finally:
            await fake.stop()
        assert connects <= 15 + 1, f"{connects} connects in 1.5 s with advice {connect_advice}"
        assert handshakes <= 3 + 1, f"{handshakes} handshakes in 1.5 s, advice {connect_advice}"

    asyncio.run(scenario())


@EXAMPLES
@given(
    faults=fault_scripts,
    connect_advice=advice(reconnect=["retry", "handshake", "none", None]),
    buggy=st.booleans(),
)
@example(faults=["deep", "normal"], connect_advice={}, buggy=True)
def test_the_client_task_never_crashes(
    faults: list[str], connect_advice: dict[str, Any], buggy: bool
) -> None:
    # (hypothesis raises the recursion limit while it runs, so a deep message cannot show its
    # RecursionError here; tests/integration/cometd/test_lost_responses.py covers it.)
    extensions: list[Extension] = [AckExtension()]
    if buggy:
        extensions.append(FailsOnData())

    async def scenario() -> None:
        fake = await started_fake(timeout_ms=200)
        # An acknowledging server: the ack extension sees every payload too.
        fake.on("/meta/handshake", patch_reply(ext={"ack": True}))
        script = Script(fake, faults, connect_advice, cycle=True)
        fake.on("/meta/connect", script.action())
        with task_failures() as crashes:
            try:
                client = client_for(fake, extensions=extensions)
                async with client:
                    await client.subscribe(CHANNEL)
                    deadline = time.monotonic() + 1.5
                    n = 0
                    while time.monotonic() < deadline:
                        fake.publish(CHANNEL, {"n": n})
                        n += 1
                        try:
                            async with asyncio.timeout(0.1):
                                await client.receive()
                        except TimeoutError:
                            pass
                        except (TransportTimeoutError, ServerError):
                            break  # reported to the application: not a crash
            except ServerError:
                pass  # the server ended the session (reconnect: none)
            finally:
                await fake.stop()
        assert not crashes, [r.getMessage() for r in crashes]

    asyncio.run(scenario())


@EXAMPLES
@given(
    faults=fault_scripts,
    connect_advice=advice(reconnect=["retry", "handshake", None]),
    cycle=st.booleans(),
)
@example(faults=["normal"], connect_advice={"interval": 10**15}, cycle=True)  # park for ages
def test_the_client_never_stalls_without_saying_so(
    faults: list[str], connect_advice: dict[str, Any], cycle: bool
) -> None:
    async def scenario() -> None:
        fake = await started_fake(timeout_ms=300)
        script = Script(fake, faults, connect_advice, cycle=cycle)
        fake.on("/meta/connect", script.action())
        outcome = "stalled"
        try:
            client = client_for(fake)
            async with client:
                await client.subscribe(CHANNEL)

                async def publisher() -> None:
                    n = 0
                    while True:  # cancelled below; markers may be lost with a lost response
                        fake.publish(CHANNEL, {"n": n})
                        n += 1
                        await asyncio.sleep(0.1)

                feed = asyncio.create_task(publisher())
                end = time.monotonic() + 4 * CONNECTION_TIMEOUT
                try:
                    # Events keep coming (no gap longer than the bound), or the client says it
                    # has no connection.
                    while time.monotonic() < end:
                        async with asyncio.timeout(CONNECTION_TIMEOUT * 2 + 2.0):
                            await client.receive()
                    outcome = "received"
                except TransportTimeoutError:
                    outcome = "reported"
                except TimeoutError:
                    outcome = f"stalled in state {client.state}"
                finally:
                    feed.cancel()
        except ClientError as exc:
            outcome = f"crashed: {exc}"
        finally:
            await fake.stop()
        assert outcome in ("received", "reported"), f"{outcome}: {faults} {connect_advice}"

    asyncio.run(scenario())


_event_n = iter(range(10**9))
well_formed = st.builds(lambda: ("event", next(_event_n)))
malformed = st.sampled_from(
    [
        ("raw", "3"),
        ("raw", '"text"'),
        ("raw", "null"),
        ("raw", '{"no": "channel"}'),
        ("raw", '{"channel": 5, "data": {}}'),
        ("raw", json.dumps({"channel": "/not/subscribed", "data": {"n": -1}})),
        ("raw", json.dumps({"channel": CHANNEL + "/deeper", "data": {"n": -2}})),
        ("raw", DEEP),
        ("raw", json.dumps({"channel": "/meta/unknown", "data": {"n": -3}})),
    ]
)
reply_shapes = st.lists(st.lists(st.one_of(well_formed, malformed), max_size=6), max_size=5)


@EXAMPLES
@given(
    batches=reply_shapes,
    connect_advice=advice(reconnect=["retry", "bogus"], value=st.one_of(_wrong_type, st.just(0))),
    transport=st.sampled_from([ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET]),
)
def test_every_well_formed_data_message_is_delivered_once(
    batches: list[list[tuple[str, Any]]], connect_advice: dict[str, Any], transport: ConnectionType
) -> None:
    expected = [n for batch in batches for kind, n in batch if kind == "event"]
    pending = list(batches)

    async def add_items(exchange: Exchange, message: dict[str, Any]) -> None:
        for reply in exchange.replies:
            if reply.get("channel") == "/meta/connect" and connect_advice:
                reply["advice"] = dict(connect_advice)
        if not pending:
            return
        items = [
            json.dumps({"channel": CHANNEL, "data": {"n": value}}) if kind == "event" else value
            for kind, value in pending.pop(0)
        ]
        exchange.raw_body = _with_items(exchange, items)

    async def scenario() -> list[int]:
        fake = await started_fake(timeout_ms=100)
        got: list[int] = []
        try:
            client = client_for(fake, transport)
            async with client:
                await client.subscribe(CHANNEL)
                fake.on("/meta/connect", Action(after=add_items))
                async with asyncio.timeout(WAIT):
                    while pending or len(got) < len(expected):
                        if client.pending_count or len(got) < len(expected):
                            try:
                                async with asyncio.timeout(0.5):
                                    got.extend(
                                        m["data"]["n"] for m in await client.receive_many(50)
                                    )
                            except TimeoutError:
                                pass
                        else:
                            await asyncio.sleep(0.05)  # the script still has batches to serve
                # Anything more would be a duplicate: give it one more poll to show up.
                await asyncio.sleep(0.3)
                while client.pending_count:
                    got.extend(m["data"]["n"] for m in await client.receive_many(50))
        finally:
            await fake.stop()
        return got

    assert asyncio.run(scenario()) == expected
