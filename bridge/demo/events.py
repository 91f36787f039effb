"""Realistic Salesforce-shaped demo events: a platform event (``/event/Order__e``) and a change
data capture event (``/data/AccountChangeEvent``). Each carries ``data.event.replayId``
(increasing per channel) and ``data.event.createdDate``, like the real thing.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


ORDER_CHANNEL = "/event/Order__e"
ACCOUNT_CHANNEL = "/data/AccountChangeEvent"
DEFAULT_CHANNELS = (ORDER_CHANNEL, ACCOUNT_CHANNEL)

_CUSTOMERS = (
    "Acme GmbH",
    "Globex Corporation",
    "Initech",
    "Umbrella plc",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent AG",
    "Tyrell Corp",
)
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_STATUSES = ("Created", "Paid", "Shipped", "Cancelled")
_INDUSTRIES = ("Manufacturing", "Retail", "Energy", "Finance", "Healthcare")
_CHANGE_TYPES = ("CREATE", "UPDATE", "UPDATE", "UPDATE", "DELETE")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _sf_id(rng: random.Random, prefix: str) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return prefix + "".join(rng.choice(alphabet) for _ in range(15))


class EventFactory:
    """Builds the next event for a channel; deterministic for a given ``seed``."""

    def __init__(self, seed: int | None = None, *, clock: Callable[[], datetime] | None = None):
        self._rng = random.Random(seed)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._replay_ids: dict[str, int] = {}
        self._order_number = 0
        self._builders: dict[str, Callable[[datetime], dict[str, Any]]] = {
            ORDER_CHANNEL: self._order,
            ACCOUNT_CHANNEL: self._account_change,
        }

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._builders)

    def next(self, channel: str) -> dict[str, Any]:
        """The ``data`` of the next event on ``channel`` (a channel of :attr:`channels`)."""
        builder = self._builders.get(channel)
        if builder is None:
            raise ValueError(f"no demo events for channel {channel!r}; have {self.channels}")
        now = self._clock()
        data = builder(now)
        # Salesforce replay ids are opaque but increase per channel; start somewhere realistic.
        replay_id = self._replay_ids.get(channel, 1000 * (1 + len(self._replay_ids))) + 1
        self._replay_ids[channel] = replay_id
        data["event"] = {
            "replayId": replay_id,
            "EventUuid": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            "createdDate": _iso(now),
        }
        return data

    def _order(self, now: datetime) -> dict[str, Any]:
        rng = self._rng
        self._order_number += 1
        return {
            "schema": "Fq2P3Y5Jr0ydrl7H2o-ZCg",
            "payload": {
                "OrderNumber__c": f"ORD-{self._order_number:06d}",
                "Customer__c": rng.choice(_CUSTOMERS),
                "Amount__c": round(rng.uniform(5, 2500), 2),
                "Currency__c": rng.choice(_CURRENCIES),
                "Status__c": rng.choice(_STATUSES),
                "Items__c": rng.randint(1, 12),
                "CreatedById": _sf_id(rng, "005"),
                "CreatedDate": _iso(now),
            },
        }

    def _account_change(self, now: datetime) -> dict[str, Any]:
        rng = self._rng
        change_type = rng.choice(_CHANGE_TYPES)
        fields: dict[str, Any] = {}
        changed: list[str] = []
        if change_type != "DELETE":
            fields = {
                "Name": rng.choice(_CUSTOMERS),
                "Industry": rng.choice(_INDUSTRIES),
                "AnnualRevenue": rng.randrange(100_000, 50_000_000, 1000),
                "NumberOfEmployees": rng.randint(5, 20_000),
            }
            changed = sorted(rng.sample(sorted(fields), k=rng.randint(1, len(fields))))
            if change_type == "UPDATE":
                fields = {name: fields[name] for name in changed}
            fields["LastModifiedDate"] = _iso(now)
        return {
            "schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
            "payload": {
                "ChangeEventHeader": {
                    "entityName": "Account",
                    "recordIds": [_sf_id(rng, "001")],
                    "changeType": change_type,
                    "changeOrigin": "com/salesforce/api/rest/62.0",
                    "transactionKey": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "sequenceNumber": 1,
                    "commitTimestamp": int(now.timestamp() * 1000),
                    "commitUser": _sf_id(rng, "005"),
                    "commitNumber": rng.randrange(10**10, 10**11),
                    "changedFields": changed,
                },
                **fields,
            },
        }
