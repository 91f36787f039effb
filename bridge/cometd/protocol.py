"""Sans-I/O Bayeux core: message builders, advice, reply classification, decisions, backoff.

No sockets, no clock, no asyncio: time and randomness come in as arguments, so every rule
here is unit-tested on plain dicts.

Rule 1: advice is merged field by field; a reply that carries only ``reconnect`` keeps the
        last known ``timeout``/``interval``/``maxInterval`` (replacing the whole advice would
        drop the poll timeout to its default and make the client misjudge a live poll as
        hung). Times are ms on the wire and seconds everywhere else; the conversion happens
        in :meth:`Advice.merge` only.
Rule 2: what to do after a reply is decided by :func:`decide_connect`, :func:`decide_handshake`
        and :func:`decide_transport_error`; the server's ``reconnect`` advice is honoured on
        successful *and* failed replies (a server ends or moves a session by advice alone),
        and failures back off with jitter (so many clients of one restarted server do not
        retry in lockstep).
Rule 3: an unknown session is a re-handshake, never an authentication failure (a token
        refresh does not bring a lost session back, and wastes token requests);
        ``authenticate()`` is asked for only on real auth failures, followed by a fresh handshake.
Rule 4: ids come from one counter per client that never restarts (a reply to a message of an
        old session must never match a new message that reused its id).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson

from .exceptions import _split_error


__all__ = [
    "Message",
    "ConnectionType",
    "Reconnect",
    "Action",
    "FailureKind",
    "Advice",
    "BayeuxError",
    "Failure",
    "LIMIT_LABELS",
    "limit_label",
    "Backoff",
    "Decision",
    "MessageFactory",
    "parse_error",
    "classify_failure",
    "failure_text",
    "refused_replay_id",
    "is_event",
    "MAX_ADVICE",
    "MAX_DEPTH",
    "too_deep",
    "describe_too_deep",
    "channel_matches",
    "instant_reply_spacing",
    "validate_channel",
    "validate_payload",
    "split_payload",
    "split_replies",
    "decide_connect",
    "decide_handshake",
    "decide_transport_error",
]

#: One Bayeux message as decoded from JSON.
Message = dict[str, Any]

META_HANDSHAKE = "/meta/handshake"
META_CONNECT = "/meta/connect"
META_DISCONNECT = "/meta/disconnect"
META_SUBSCRIBE = "/meta/subscribe"
META_UNSUBSCRIBE = "/meta/unsubscribe"
BAYEUX_VERSION = "1.0"


class ConnectionType(StrEnum):
    """Transports the client speaks (values as in ``supportedConnectionTypes``)."""

    WEBSOCKET = "websocket"
    LONG_POLLING = "long-polling"


class Reconnect(StrEnum):
    """Values of ``advice.reconnect``."""

    RETRY = "retry"
    HANDSHAKE = "handshake"
    NONE = "none"


class Action(StrEnum):
    """What the client does next."""

    CONNECT = "connect"
    HANDSHAKE = "handshake"
    CLOSE = "close"


class FailureKind(StrEnum):
    """Why the server said ``successful: false``."""

    UNKNOWN_SESSION = "unknown_session"
    AUTH = "auth"
    QUOTA = "quota"
    DENIED = "denied"
    OTHER = "other"


# ---------------------------------------------------------------------------------------------
# Advice (Rule 1)


_MS = 1000.0


#: The longest ``interval`` or ``timeout`` the client honours (seconds). A server advising more
#: (1e15 ms, infinity) would park the client for ages; longer values are clamped to this.
MAX_ADVICE = 600.0


def _ms_to_s(value: object) -> tuple[float | None, bool]:
    """``(seconds, clamped)``: None for a field to ignore (not a number, NaN, negative)."""
    # bool is an int subclass; a JSON true is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, False
    if value != value or value < 0:  # NaN or negative: ignore the field
        return None, False
    # Compared before float(): a huge JSON integer does not fit a float.
    if value > MAX_ADVICE * _MS:
        return MAX_ADVICE, True
    return float(value) / _MS, False


@dataclass(frozen=True, slots=True)
class Advice:
    """The server's advice, in seconds. Defaults apply until the server says otherwise."""

    reconnect: Reconnect = Reconnect.RETRY
    interval: float = 0.0
    timeout: float = 60.0
    max_interval: float = 10.0
    multiple_clients: bool = False
    #: The last merge clamped ``interval`` or ``timeout`` to :data:`MAX_ADVICE` (for a log line).
    clamped: bool = False

    def merge(self, raw: object, connection_type: str | None = None) -> Advice:
        """Return this advice updated by a message's ``advice`` object, field by field.

        A sub-object named after ``connection_type`` (e.g. ``"long-polling": {...}``) applies
        on top, to that transport only. Unknown or ill-typed fields are ignored.
        """
        base = replace(self, clamped=False) if self.clamped else self
        if not isinstance(raw, dict):
            return base
        merged = base._merge_fields(raw)
        if connection_type is not None:
            merged = merged._merge_fields(raw.get(connection_type))
        return merged

    def _merge_fields(self, raw: object) -> Advice:
        if not isinstance(raw, dict):
            return self
        changes: dict[str, Any] = {}
        reconnect = raw.get("reconnect")
        if isinstance(reconnect, str) and reconnect in _RECONNECT_VALUES:
            changes["reconnect"] = Reconnect(reconnect)
        for wire, field in (("interval", "interval"), ("timeout", "timeout")):
            seconds, clamped = _ms_to_s(raw.get(wire))
            if seconds is not None:
                changes[field] = seconds
            if clamped:
                changes["clamped"] = True
        seconds, _ = _ms_to_s(raw.get("maxInterval"))
        if seconds is not None:
            changes["max_interval"] = seconds
        multiple = raw.get("multiple-clients")
        if isinstance(multiple, bool):
            changes["multiple_clients"] = multiple
        return replace(self, **changes) if changes else self

    @property
    def session_expiry(self) -> float:
        """Seconds without a successful connect after which the server surely dropped us."""
        return self.timeout + self.interval + self.max_interval


_RECONNECT_VALUES = frozenset(r.value for r in Reconnect)


# ---------------------------------------------------------------------------------------------
# Errors and reply classification (Rule 3)


@dataclass(frozen=True, slots=True)
class BayeuxError:
    """An ``error`` field parsed by the grammar ``code ":" args ":" message``."""

    code: int | None
    args: tuple[str, ...]
    message: str


def parse_error(error: object) -> BayeuxError | None:
    """Parse a Bayeux ``error`` value; None when absent or not a string."""
    if not isinstance(error, str):
        return None
    code, args, message = _split_error(error)
    return BayeuxError(code, tuple(args), message if message is not None else error)


_UNKNOWN_SESSION_TEXTS = ("session unknown", "unknown session", "unknown client")
_AUTH_TEXTS = ("authentication invalid", "request requires authentication", "invalid token")
#: Words by which servers say a quota or rate limit is exhausted. ``403::Too many requests``
#: is a quota like ``...limit exceeded``: retrying it soon only burns more of the same limit.
_QUOTA_TEXTS = ("limit exceeded", "limit reached", "quota", "too many")
_UNAUTHORIZED = 401
_UNKNOWN = 402
_FORBIDDEN = 403

#: Every value :func:`limit_label` can return (a bounded metric label).
LIMIT_LABELS = frozenset(
    {
        "concurrent_clients",
        "daily_events",
        "hourly_events",
        "subscriptions",
        "api_requests",
        "other",
    }
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What an unsuccessful reply means.

    ``kind`` decides the client's next step (:func:`decide_connect`); ``limit`` is the bounded
    label of an exhausted quota (QUOTA only); ``advice`` is the reply's own ``reconnect``
    advice, if any; ``code`` and ``reason`` are the server's (Salesforce's ``failureReason``
    when present, else ``error``), for logs only, never a metric label.
    """

    kind: FailureKind
    code: int | None
    reason: str
    limit: str | None = None
    advice: Reconnect | None = None


def _normal(text: str) -> str:
    return text.replace("_", " ").strip().lower()


def _failure_reason(reply: Message) -> BayeuxError | None:
    """Salesforce puts the real cause of a denied handshake in ``ext.sfdc.failureReason``."""
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, dict) else None
    return parse_error(sfdc.get("failureReason")) if isinstance(sfdc, dict) else None


def failure_text(reply: Message) -> str | None:
    """The reply's ``error``, with Salesforce's ``failureReason`` appended when there is one.

    ``403::Handshake denied`` alone does not say whether a token expired or a quota ran out;
    events and logs carry both so that the reader (and the quota metric) can tell.
    """
    error = reply.get("error")
    text = error if isinstance(error, str) else None
    reason = _raw_failure_reason(reply)
    if reason:
        return f"{text} (failureReason: {reason})" if text else reason
    return text


def limit_label(message: str) -> str:
    """Map a quota/limit message to one of :data:`LIMIT_LABELS`."""
    text = message.lower()
    if "concurrent" in text:
        return "concurrent_clients"
    if "daily" in text:
        return "daily_events"
    if "hourly" in text:
        return "hourly_events"
    if "subscri" in text:
        return "subscriptions"
    if "request" in text or "api" in text:
        return "api_requests"
    return "other"


def _kind_of(parsed: list[BayeuxError]) -> tuple[FailureKind, BayeuxError | None]:
    """The failure's kind and the parsed text that decided it (``failureReason`` first)."""
    for error in parsed:
        text = _normal(error.message)
        if error.code in (_UNAUTHORIZED, _UNKNOWN, _FORBIDDEN) and text.startswith(
            _UNKNOWN_SESSION_TEXTS
        ):
            # Checked before auth: Faye says 401 for a lost session, which needs a
            # re-handshake, not a new token.
            return FailureKind.UNKNOWN_SESSION, error
    for error in parsed:
        text = _normal(error.message)
        if any(word in text for word in _QUOTA_TEXTS):
            return FailureKind.QUOTA, error
        if error.code == _UNAUTHORIZED or any(word in text for word in _AUTH_TEXTS):
            return FailureKind.AUTH, error
    for error in parsed:
        if error.code == _FORBIDDEN:
            return FailureKind.DENIED, error
    return FailureKind.OTHER, None


def classify_failure(reply: Message) -> Failure:
    """Classify an unsuccessful reply: the one reading of Bayeux error texts, used by the
    decision table, events, logs and the daemon's metrics alike."""
    reason = _failure_reason(reply)
    error = parse_error(reply.get("error"))
    parsed = [p for p in (reason, error) if p is not None]
    kind, decisive = _kind_of(parsed)
    raw_reason = _raw_failure_reason(reply)
    raw_error = reply.get("error")
    raw = raw_reason or (raw_error if isinstance(raw_error, str) else "")
    first = parsed[0] if parsed else None
    code = first.code if first is not None else None
    limit = limit_label(decisive.message) if kind is FailureKind.QUOTA and decisive else None
    advice = reply.get("advice")
    reconnect = advice.get("reconnect") if isinstance(advice, dict) else None
    typed = (
        Reconnect(reconnect)
        if isinstance(reconnect, str) and reconnect in _RECONNECT_VALUES
        else None
    )
    return Failure(kind, code, raw, limit, typed)


def _raw_failure_reason(reply: Message) -> str | None:
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, dict) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, dict) else None
    return reason if isinstance(reason, str) and reason else None


# Salesforce: "400::The replayId {82} you provided was invalid. ..."; older API versions and
# EMP report "400::The replayId for channel X wasn't found using the provided replay ID map".
_REPLAY_ID_INVALID = re.compile(r"^400::The replayId \{(?P<id>-?\d+)\} you provided was invalid")
_REPLAY_ID_NOT_FOUND = re.compile(r"^400::The replayId for channel .* wasn't found")


def refused_replay_id(error: str) -> tuple[bool, int | None]:
    """Whether a subscribe's ``error`` refuses its replay id (outside the server's retention),
    and the refused id when the text names it. A refusal of kind OTHER for the decision
    table: the subscriber, not the session loop, decides what a replay gap means."""
    match = _REPLAY_ID_INVALID.match(error)
    if match is not None:
        return True, int(match.group("id"))
    return _REPLAY_ID_NOT_FOUND.match(error) is not None, None


def is_event(message: Message) -> bool:
    """True for a data message to deliver to the application, False for a reply.

    Classify by ``successful`` first, then ``data`` (a publish reply may echo the published
    ``data``, and must not be delivered as an event); ``/meta/*`` messages are never events.
    """
    if "data" not in message or "successful" in message:
        return False
    channel = message.get("channel")
    return type(channel) is str and not channel.startswith("/meta/")


# ---------------------------------------------------------------------------------------------
# Channels and payload shape

_SEGMENT = r"[^/*\s]+"
_CHANNEL_RE = re.compile(rf"^(/{_SEGMENT})+(/\*\*?)?$|^/\*\*?$")


def validate_channel(channel: object, *, subscribe: bool = False) -> str:
    """Return ``channel`` if it is a valid Bayeux channel name, else raise ValueError.

    Wildcards only as the whole last segment (``*`` or ``**``); ``/meta/**`` cannot be
    subscribed to or published on by the application.
    """
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        raise ValueError(f"invalid channel name: {channel!r}")
    if channel == "/meta" or channel.startswith("/meta/"):
        raise ValueError(f"meta channels are reserved for the protocol: {channel!r}")
    if not subscribe and channel.endswith("*"):
        raise ValueError(f"cannot publish to a wildcard channel: {channel!r}")
    return channel


def validate_payload(obj: object) -> tuple[list[Message], list[tuple[str, str]]]:
    """Split decoded JSON into Bayeux messages and skipped items ``(reason, detail)``.

    A list of objects with a string ``channel`` is Bayeux; a single such object is accepted
    as a list of one. Anything else in the list is skipped (reason ``not_bayeux``). A body
    that is not a list or object at all returns no messages and one skipped entry.
    """
    messages, skipped = split_payload(obj)
    return messages, [(reason, detail) for reason, detail, _item in skipped]


def split_payload(
    obj: object, *, shallow: bool = False
) -> tuple[list[Message], list[tuple[str, str, object]]]:
    """:func:`validate_payload` with each skipped entry's item: ``(reason, detail, item)``
    (the whole body when it is no list or object), so an application can keep what it got.
    ``shallow``: the caller knows no item nests deeper than MAX_DEPTH (no depth check)."""
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        return [], [("not_bayeux", f"body is a {type(obj).__name__}, not a list", obj)]
    messages: list[Message] = []
    skipped: list[tuple[str, str, object]] = []
    # The exact walk costs microseconds per message; orjson serialises the whole body in a
    # fraction of that and fails exactly when some item nests deeper than MAX_DEPTH.
    check_depth = not shallow and not _shallow(obj)
    for item in obj:
        if check_depth and too_deep(item):
            skipped.append(("too_deep", describe_too_deep(item), item))
        elif isinstance(item, dict) and isinstance(item.get("channel"), str):
            messages.append(item)
        else:
            skipped.append(("not_bayeux", _describe(item), item))
    return messages, skipped


#: Deepest nesting of lists/objects accepted in one message (the message object is level 1).
#: JSON decoders accept far more (orjson ~1,000 levels), but every recursive walk of such a
#: message (repr, json.dumps, a log line) would hit Python's recursion limit (1,000); real
#: Bayeux events nest a few levels. 253 is also the deepest message orjson serialises inside
#: a body, which makes the common case cheap (:func:`_shallow`).
MAX_DEPTH = 253


def _shallow(body: list[Any]) -> bool:
    """True when no item of ``body`` nests deeper than MAX_DEPTH (False: check each one)."""
    try:
        orjson.dumps(body)
    except TypeError:  # too deep, or anything else orjson cannot encode: walk each item
        return False
    return True


def too_deep(obj: object, limit: int = MAX_DEPTH) -> bool:
    """True when ``obj`` nests lists/objects deeper than ``limit`` (iterative: no recursion).

    On every received message, so kept tight: only containers are pushed.
    """
    if type(obj) is not dict and type(obj) is not list:
        return False
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        item, depth = pop()
        for value in item.values() if type(item) is dict else item:
            kind = type(value)
            if kind is dict or kind is list:
                if depth >= limit:
                    return True
                push((value, depth + 1))
    return False


def describe_too_deep(item: object) -> str:
    """A log detail for a too-deep message that never walks it (no repr)."""
    channel = item.get("channel") if isinstance(item, dict) else None
    name = channel if isinstance(channel, str) else type(item).__name__
    return f"{name[:200]} message nested deeper than {MAX_DEPTH} levels"


def _describe(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 200 else text[:197] + "..."


def channel_matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` is delivered to a subscription to ``pattern`` (Bayeux wildcards:
    ``/a/*`` one more segment, ``/a/**`` one or more)."""
    if pattern == channel:
        return True
    if pattern.endswith("/**"):
        prefix = pattern[:-2]
        return channel.startswith(prefix) and len(channel) > len(prefix)
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        rest = channel[len(prefix) :]
        return channel.startswith(prefix) and bool(rest) and "/" not in rest
    return False


def split_replies(
    sent: Sequence[Message], received: Iterable[Message]
) -> tuple[dict[str, Message], list[Message]]:
    """Match received replies to sent messages; return ``(replies by sent id, the rest)``.

    A reply matches by ``id``; a reply without ``id`` (some servers omit it) takes the first sent
    message of the same channel still unanswered. Events and replies that match nothing
    (stale or unsolicited) are returned in arrival order in the rest.
    """
    unanswered: dict[str, Message] = {}
    for message in sent:
        mid = message.get("id")
        if isinstance(mid, str):
            unanswered[mid] = message
    replies: dict[str, Message] = {}
    rest: list[Message] = []
    for message in received:
        if is_event(message):
            rest.append(message)
            continue
        mid = message.get("id")
        if isinstance(mid, str | int) and str(mid) in unanswered:
            replies[str(mid)] = message
            del unanswered[str(mid)]
            continue
        if mid is None:
            channel = message.get("channel")
            match = next((k for k, m in unanswered.items() if m.get("channel") == channel), None)
            # An unsolicited /meta/disconnect (server-side close) has no id and must stay
            # visible unless we actually sent a disconnect.
            if match is not None:
                replies[match] = message
                del unanswered[match]
                continue
        rest.append(message)
    return replies, rest


# ---------------------------------------------------------------------------------------------
# Message builders (Rule 4)


class MessageFactory:
    """Builds outgoing messages with ids from one counter that never restarts."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.client_id: str | None = None

    def next_id(self) -> str:
        return str(next(self._ids))

    def handshake(
        self, connection_types: Sequence[str], advice_timeout: float, advice_interval: float = 0.0
    ) -> Message:
        return {
            "channel": META_HANDSHAKE,
            "version": BAYEUX_VERSION,
            "minimumVersion": BAYEUX_VERSION,
            "supportedConnectionTypes": list(connection_types),
            "advice": {
                "timeout": int(advice_timeout * _MS),
                "interval": int(advice_interval * _MS),
            },
            "id": self.next_id(),
        }

    def connect(self, connection_type: str, *, first: bool) -> Message:
        message: Message = {
            "channel": META_CONNECT,
            "clientId": self.client_id,
            "connectionType": connection_type,
            "id": self.next_id(),
        }
        if first:
            # The first connect after a (re)handshake or a failure must come back at once.
            message["advice"] = {"timeout": 0}
        return message

    def subscribe(self, channel: str) -> Message:
        return {
            "channel": META_SUBSCRIBE,
            "clientId": self.client_id,
            "subscription": channel,
            "id": self.next_id(),
        }

    def unsubscribe(self, channel: str) -> Message:
        return {
            "channel": META_UNSUBSCRIBE,
            "clientId": self.client_id,
            "subscription": channel,
            "id": self.next_id(),
        }

    def publish(self, channel: str, data: object) -> Message:
        return {"channel": channel, "data": data, "clientId": self.client_id, "id": self.next_id()}

    def disconnect(self) -> Message:
        return {"channel": META_DISCONNECT, "clientId": self.client_id, "id": self.next_id()}


# ---------------------------------------------------------------------------------------------
# Backoff and decisions (Rule 2)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter; ``quota`` is the long wait after limit errors."""

    base: float = 0.1
    cap: float = 30.0
    quota: float = 60.0

    def delay(self, attempt: int, rnd: Callable[[], float]) -> float:
        """Delay before retry number ``attempt`` (0-based), in [half, full] of the step.

        Half-jitter keeps a floor, so a failing server never sees a hot loop.
        """
        step = min(self.cap, self.base * float(2 ** min(attempt, 30)))
        return step * (0.5 + rnd() / 2)

    def quota_delay(self, attempt: int, rnd: Callable[[], float]) -> float:
        step = min(max(self.cap, self.quota), self.quota * float(2 ** min(attempt, 4)))
        return step * (0.5 + rnd() / 2)


@dataclass(frozen=True, slots=True)
class Decision:
    """The next step: ``action`` after ``delay`` seconds.

    ``reason`` is a reconnect reason (the bounded list in CONTRACTS.md) or None for a normal
    poll; ``authenticate`` asks for the auth extension's ``authenticate()`` before a fresh
    handshake.
    """

    action: Action
    delay: float = 0.0
    reason: str | None = None
    authenticate: bool = False


POLL = Decision(Action.CONNECT)

#: Spacing (seconds) between ``/meta/connect`` requests once replies keep coming back at once
#: and empty (a server that does not hold polls and advises ``interval: 0``).
MIN_SPACING = 0.1
_FIRST_SPACING = 0.005


def instant_reply_spacing(streak: int) -> float:
    """Seconds before the next ``/meta/connect`` after ``streak`` consecutive successful
    replies that came back at once with no event.

    Doubles from 5 ms to :data:`MIN_SPACING`: the bound is at most 10 requests per second
    once a server has answered instantly and empty for 1 s (and at most 15 in that first
    second: five doublings take 0.155 s).
    """
    if streak <= 0:
        return 0.0
    return min(MIN_SPACING, _FIRST_SPACING * float(2 ** min(streak - 1, 16)))


def _handshake_delay(
    advice: Advice, rehandshakes: int, rnd: Callable[[], float], backoff: Backoff
) -> float:
    """A re-handshake the server asked for goes out after its interval; each further one
    before a session works again (a successful connect that keeps it) backs off more, so
    ``reconnect: handshake`` on every reply is no hot loop. Failures of other kinds before it
    (a dropped socket, then ``unknown_session``) do not delay it."""
    if rehandshakes <= 0:
        return advice.interval
    return max(advice.interval, backoff.delay(rehandshakes - 1, rnd))


_FAILURE_REASON = {
    FailureKind.UNKNOWN_SESSION: "unknown_session",
    FailureKind.AUTH: "auth",
    FailureKind.QUOTA: "quota",
    FailureKind.DENIED: "server_advice",
    FailureKind.OTHER: "server_advice",
}


def _escalate(
    decision: Decision, advice: Advice, now: float, unconnected_since: float | None
) -> Decision:
    """Go straight to a handshake when the server has surely expired the session."""
    if decision.action is not Action.CONNECT or unconnected_since is None:
        return decision
    if now - unconnected_since + decision.delay > advice.session_expiry:
        return Decision(Action.HANDSHAKE, decision.delay, "max_interval")
    return decision


def decide_connect(
    reply: Message,
    advice: Advice,
    *,
    attempt: int,
    rnd: Callable[[], float],
    now: float,
    unconnected_since: float | None,
    has_auth: bool,
    backoff: Backoff = Backoff(),
    rehandshakes: int = 0,
) -> Decision:
    """Decide after a ``/meta/connect`` reply; ``advice`` already includes the reply's advice.

    ``rehandshakes``: handshakes since a session last worked (see :func:`_handshake_delay`).
    """
    if reply.get("successful") is True:
        if advice.reconnect is Reconnect.NONE:
            return Decision(Action.CLOSE, 0.0, "server_disconnect")
        if advice.reconnect is Reconnect.HANDSHAKE:
            delay = _handshake_delay(advice, rehandshakes, rnd, backoff)
            return Decision(Action.HANDSHAKE, delay, "server_advice")
        return Decision(Action.CONNECT, advice.interval) if advice.interval else POLL
    kind = classify_failure(reply).kind
    return _decide_failure(
        kind, reply, advice, attempt, rnd, now, unconnected_since, has_auth, backoff, rehandshakes
    )


def decide_handshake(
    reply: Message,
    advice: Advice,
    *,
    attempt: int,
    rnd: Callable[[], float],
    has_auth: bool,
    backoff: Backoff = Backoff(),
) -> Decision:
    """Decide after an unsuccessful ``/meta/handshake`` reply (a successful one connects)."""
    if reply.get("successful") is True:
        return Decision(Action.CONNECT)
    kind = classify_failure(reply).kind
    special = _auth_or_quota(kind, has_auth, attempt, rnd, backoff)
    if special is not None:
        return special
    if advice.reconnect is Reconnect.NONE:
        return Decision(Action.CLOSE, 0.0, _FAILURE_REASON[kind])
    delay = max(advice.interval, backoff.delay(attempt, rnd))
    return Decision(Action.HANDSHAKE, delay, _FAILURE_REASON[kind])


def _auth_or_quota(
    kind: FailureKind, has_auth: bool, attempt: int, rnd: Callable[[], float], backoff: Backoff
) -> Decision | None:
    """Auth and quota failures are decided by meaning, whatever the advice says (the same on
    handshake and connect replies): a new token and a fresh handshake, or a long back-off."""
    if kind is FailureKind.AUTH and has_auth:
        # Salesforce sends 401 with reconnect:none; a new token and a fresh handshake fix it.
        return Decision(Action.HANDSHAKE, backoff.delay(attempt, rnd), "auth", authenticate=True)
    if kind is FailureKind.QUOTA:
        return Decision(Action.HANDSHAKE, backoff.quota_delay(attempt, rnd), "quota")
    return None


def _decide_failure(
    kind: FailureKind,
    reply: Message,
    advice: Advice,
    attempt: int,
    rnd: Callable[[], float],
    now: float,
    unconnected_since: float | None,
    has_auth: bool,
    backoff: Backoff,
    rehandshakes: int = 0,
) -> Decision:
    special = _auth_or_quota(kind, has_auth, attempt, rnd, backoff)
    if special is not None:
        return special
    if advice.reconnect is Reconnect.NONE:
        return Decision(Action.CLOSE, 0.0, _FAILURE_REASON[kind])
    if kind is FailureKind.UNKNOWN_SESSION:
        # Whatever the (maybe missing) advice says, the session is gone: handshake again, at
        # once when the session had worked (every moment without a session loses events on a
        # server without replay), backing off only when new sessions keep failing.
        delay = _handshake_delay(advice, rehandshakes, rnd, backoff)
        return Decision(Action.HANDSHAKE, delay, "unknown_session")
    delay = advice.interval if attempt == 0 else max(advice.interval, backoff.delay(attempt, rnd))
    reason = _FAILURE_REASON[kind]
    if advice.reconnect is Reconnect.HANDSHAKE:
        return Decision(Action.HANDSHAKE, delay, reason)
    delay = max(advice.interval, backoff.delay(attempt, rnd))
    return _escalate(Decision(Action.CONNECT, delay, reason), advice, now, unconnected_since)


def decide_transport_error(
    reason: str,
    advice: Advice,
    *,
    attempt: int,
    rnd: Callable[[], float],
    now: float,
    unconnected_since: float | None,
    handshaking: bool,
    backoff: Backoff = Backoff(),
) -> Decision:
    """Decide after a transport error (network, timeout, HTTP status, malformed body).

    The first retry after a connection dropped under a working session goes out at once (a
    server restart or session drop on WebSocket closes the socket; every moment without a
    session loses events on a server without replay); the backoff starts with the second.
    """
    if reason == "network" and attempt == 0 and not handshaking:
        return _escalate(Decision(Action.CONNECT, 0.0, reason), advice, now, unconnected_since)
    delay = backoff.delay(attempt, rnd)
    if handshaking:
        return Decision(Action.HANDSHAKE, delay, reason)
    return _escalate(Decision(Action.CONNECT, delay, reason), advice, now, unconnected_since)
