"""The scriptable fake Bayeux server: the demo :class:`BayeuxServer` plus per-request faults.

Only for what the real servers (tests/servers) cannot be made to do. Script a rule per channel
and occurrence, e.g. "the 3rd ``/meta/connect`` gets HTTP 503"::

    fake.on("/meta/connect", nth=3, action=http_status(503))
    fake.on("/meta/connect", action=drop_advice())          # every connect from now on
    fake.on("/meta/handshake", nth=1, action=handshake_denied(SFDC_CONCURRENT_LIMIT))

Rules match incoming messages by channel; ``nth`` counts that channel's messages from the
server's start (1-based), ``times`` limits how often a rule fires (default: once when ``nth`` is
given, else forever). Actions change the exchange before processing (status, raw body, delay,
replace the replies) or after it (patch or extend the replies). Every incoming message is
recorded with its arrival time, so a test can count requests per channel over a window
("no hot loop").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.demo.bayeux_server import BayeuxServer, Exchange
from bridge.demo.protocol import Message


SFDC_CONCURRENT_LIMIT = "403::Organization concurrent user limit exceeded"
SALESFORCE_UNKNOWN_CLIENT = "403::Unknown client"
AUTH_INVALID = "401::Authentication invalid"


@dataclass
class Action:
    """What a rule does. ``before`` runs before normal processing, ``after`` on the replies.

    The ``message`` argument is the incoming message that matched the rule.
    """

    before: Callable[[Exchange, Message], Awaitable[None]] | None = None
    after: Callable[[Exchange, Message], Awaitable[None]] | None = None
    name: str = "action"


@dataclass
class Rule:
    channel: str
    action: Action
    nth: int | None = None
    times: int | None = None
    fired: int = 0

    def wants(self, occurrence: int) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        return self.nth is None or occurrence >= self.nth


@dataclass(frozen=True)
class Received:
    """One incoming message as the fake saw it."""

    at: float  # time.monotonic()
    channel: str
    transport: str
    message: Message


class FakeBayeux(BayeuxServer):
    """A :class:`BayeuxServer` with scripted faults and a request log.

    Takes the :class:`BayeuxServer` options (``timeout_ms``, ``interval_ms``,
    ``max_interval_ms``, ``connection_types``, ``browser_cookie``, ``max_request_bytes``).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.rules: list[Rule] = []
        self.received: list[Received] = []
        self._counts: dict[str, int] = {}
        # Rules matched in before_batch, handed to after_batch of the same exchange.
        self._pending: dict[int, list[tuple[Rule, Message]]] = {}
        # Signalled on every incoming message, for tests that await "the Nth connect arrived".
        self._arrived = asyncio.Condition()

    def on(
        self, channel: str, action: Action, *, nth: int | None = None, times: int | None = None
    ) -> Rule:
        """Apply ``action`` to ``channel`` messages (the ``nth`` and later, ``times`` times)."""
        rule = Rule(channel, action, nth, times if times is not None else (1 if nth else None))
        self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        self.rules.clear()

    # -- request log ---------------------------------------------------------------------------

    def count(self, channel: str, *, since: float | None = None, until: float | None = None) -> int:
        """How many ``channel`` messages arrived in [since, until] (monotonic seconds)."""
        return sum(
            1
            for r in self.received
            if r.channel == channel
            and (since is None or r.at >= since)
            and (until is None or r.at <= until)
        )

    def messages(self, channel: str) -> list[Message]:
        return [r.message for r in self.received if r.channel == channel]

    async def wait_for(self, channel: str, count: int) -> None:
        """Return once ``count`` messages on ``channel`` have arrived (callers bound the wait)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.count(channel) >= count)

    # -- hooks ---------------------------------------------------------------------------------

    async def before_batch(self, exchange: Exchange) -> None:
        matched: list[tuple[Rule, Message]] = []
        now = time.monotonic()
        for item in exchange.messages:
            if not isinstance(item, dict) or not isinstance(item.get("channel"), str):
                continue
            channel = item["channel"]
            self._counts[channel] = occurrence = self._counts.get(channel, 0) + 1
            self.received.append(Received(now, channel, exchange.transport, item))
            for rule in self.rules:
                if rule.channel == channel and rule.wants(occurrence):
                    rule.fired += 1
                    matched.append((rule, item))
        self._pending[id(exchange)] = matched
        async with self._arrived:
            self._arrived.notify_all()
        for rule, message in matched:
            if rule.action.before is not None:
                await rule.action.before(exchange, message)

    async def after_batch(self, exchange: Exchange) -> None:
        for rule, message in self._pending.pop(id(exchange), []):
            if rule.action.after is not None:
                await rule.action.after(exchange, message)


# -- actions -----------------------------------------------------------------------------------


def _reply_for(exchange: Exchange, message: Message) -> Message | None:
    """The reply to ``message`` among the exchange's replies (same channel and id)."""
    for reply in exchange.replies:
        if reply.get("channel") == message.get("channel") and reply.get("id") == message.get("id"):
            return reply
    return None


def http_status(status: int, body: bytes = b"", content_type: str = "text/plain") -> Action:
    """Answer the whole request with an HTTP error (on WebSocket: close the socket, 1011)."""

    async def before(exchange: Exchange, message: Message) -> None:
        exchange.handled = True
        exchange.status = status
        exchange.raw_body = body or f"{status} from the fake".encode()
        exchange.content_type = content_type
        exchange.close = True

    return Action(before=before, name=f"http_status({status})")


def raw_body(body: bytes, content_type: str = "application/json") -> Action:
    """Answer with ``body`` verbatim (malformed JSON, JSON that is not Bayeux, ...)."""

    async def before(exchange: Exchange, message: Message) -> None:
        exchange.handled = True
        exchange.raw_body = body
        exchange.content_type = content_type

    return Action(before=before, name="raw_body")


def lose_response(body: bytes | None = None) -> Action:
    """Process the request normally (the server counts its events as delivered), then send
    ``body`` instead of the replies: by default the real body cut in the middle (what a reset
    mid-body leaves; the events in it are lost unless the server can send them again)."""

    async def after(exchange: Exchange, message: Message) -> None:
        full = json.dumps(exchange.replies).encode()
        exchange.raw_body = body if body is not None else full[: max(1, len(full) // 2)]

    return Action(after=after, name="lose_response")


def delay(seconds: float) -> Action:
    """Hold the request ``seconds`` before processing it (a slow server or network)."""

    async def before(exchange: Exchange, message: Message) -> None:
        await asyncio.sleep(seconds)

    return Action(before=before, name=f"delay({seconds})")


def replace_replies(replies: Sequence[Message]) -> Action:
    """Answer with exactly ``replies`` (``{id}`` in a string is filled with the request's id)."""

    async def before(exchange: Exchange, message: Message) -> None:
        exchange.handled = True
        exchange.replies = [_fill(r, message) for r in replies]

    return Action(before=before, name="replace_replies")


def patch_reply(remove: Sequence[str] = (), **fields: Any) -> Action:
    """Set ``fields`` on (and ``remove`` keys from) the normal reply to the matched message.

    ``patch_reply(advice={"reconnect": "none"})`` on a connect gives a successful connect that
    says reconnect none; ``patch_reply(remove=["advice"])`` a reply without advice.
    """

    async def after(exchange: Exchange, message: Message) -> None:
        reply = _reply_for(exchange, message)
        if reply is None:
            return
        for key in remove:
            reply.pop(key, None)
        reply.update(fields)

    return Action(after=after, name="patch_reply")


def drop_advice() -> Action:
    return patch_reply(remove=["advice"])


def append_messages(*messages: Message) -> Action:
    """Send extra messages after the normal replies (events, an unsolicited disconnect...)."""

    async def after(exchange: Exchange, message: Message) -> None:
        exchange.replies.extend(_fill(m, message) for m in messages)

    return Action(after=after, name="append_messages")


def server_disconnect() -> Action:
    """Follow the reply with an unsolicited ``/meta/disconnect`` (no id), as CometD does."""
    return append_messages({"channel": "/meta/disconnect", "successful": True})


def stale_connect_reply() -> Action:
    """Add a duplicate of the connect reply carrying an old id (a late/mismatched reply)."""

    async def after(exchange: Exchange, message: Message) -> None:
        reply = _reply_for(exchange, message)
        if reply is not None:
            stale = dict(reply, id=f"stale-{message.get('id')}")
            exchange.replies.insert(0, stale)

    return Action(after=after, name="stale_connect_reply")


def duplicate_reply() -> Action:
    """Send the reply to the matched message twice."""

    async def after(exchange: Exchange, message: Message) -> None:
        reply = _reply_for(exchange, message)
        if reply is not None:
            exchange.replies.append(dict(reply))

    return Action(after=after, name="duplicate_reply")


def fail_reply(error: str, *, reconnect: str | None = None, **fields: Any) -> Action:
    """Turn the normal reply into a failure with ``error`` (e.g. ``403::Unknown client``)."""
    extra: dict[str, Any] = {"successful": False, "error": error, **fields}
    if reconnect is not None:
        extra["advice"] = {"reconnect": reconnect, "interval": 0}
    return patch_reply(remove=["clientId"] if reconnect == "none" else (), **extra)


def handshake_denied(reason: str = SFDC_CONCURRENT_LIMIT) -> Action:
    """Salesforce's denied handshake: ``403::Handshake denied`` with ``ext.sfdc.failureReason``."""
    return replace_replies(
        [
            {
                "id": "{id}",
                "channel": "/meta/handshake",
                "successful": False,
                "error": "403::Handshake denied",
                "ext": {"sfdc": {"failureReason": reason}},
                "advice": {"reconnect": "none"},
            }
        ]
    )


def multiple_clients() -> Action:
    """CometD's answer to a second connect from the same browser: not held, advice says so."""
    return patch_reply(advice={"reconnect": "retry", "interval": 1000, "multiple-clients": True})


def _fill(template: Message, message: Message) -> Message:
    filled: Message = {}
    for key, value in template.items():
        if value == "{id}":
            if "id" in message:
                filled[key] = message["id"]
        else:
            filled[key] = value
    return filled
