"""The dead-letter settings: ``dead_letter_exchange`` (default, null, checked) and ``max_nacks``."""

from __future__ import annotations

import pytest

from tests.unit.test_settings import endpoints, load, only_problem


def test_dead_lettering_is_on_by_default() -> None:
    ep = load(endpoints()).endpoints["orders"]
    assert (ep.dead_letter_exchange, ep.max_nacks) == ("cometd.dead-letter", 10)


@pytest.mark.parametrize("off", ["null", "", "none"])
def test_null_disables_dead_lettering(off: str) -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__DEAD_LETTER_EXCHANGE": off}
    assert load(env).endpoints["orders"].dead_letter_exchange is None
    assert (
        load(endpoints(dead_letter_exchange=None)).endpoints["orders"].dead_letter_exchange is None
    )


def test_a_dead_letter_exchange_over_255_bytes_is_refused() -> None:
    var, reason = only_problem(endpoints(dead_letter_exchange="d" * 256))
    assert var.startswith("BRIDGE_ENDPOINTS")
    assert "255 bytes" in reason


def test_the_dead_letter_exchange_must_not_be_the_exchange() -> None:
    var, reason = only_problem(endpoints(exchange="orders", dead_letter_exchange="orders"))
    assert var.startswith("BRIDGE_ENDPOINTS")
    assert "must differ from exchange orders" in reason


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_nacks_must_be_positive(value: str) -> None:
    var, reason = only_problem(endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__MAX_NACKS": value})
    assert var == "BRIDGE_ENDPOINTS__ORDERS__MAX_NACKS"
    assert "greater than 0" in reason
