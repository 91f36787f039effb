"""The daemon counts what the CometD client reports as possibly lost
(``possible_gaps_total{reason="response_lost"}``) on a server without replay or ack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.inprocess import endpoint_up, eventually, metric, running_supervisor
from tests.fakes.fake_bayeux import Action, FakeBayeux, lose_response


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"


async def test_a_lost_connect_response_is_counted_as_a_possible_gap(
    amqp_url: str, fake_bayeux: FakeBayeux, exchange_name: str, tmp_path: Path
) -> None:
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [CHANNEL],
        "connection_types": "long-polling",
        "exchange": exchange_name,
    }
    async with running_supervisor(amqp_url, tmp_path, {"plain": endpoint}) as sup:
        await endpoint_up(sup, "plain", within=25)

        async def publish(exchange: Any, message: Any) -> None:
            fake_bayeux.publish(CHANNEL, {"n": 1})  # in the response that is lost

        nth = fake_bayeux.count("/meta/connect") + 2  # the one after the held connect
        fake_bayeux.on(
            "/meta/connect", Action(before=publish, after=lose_response().after), nth=nth
        )
        gaps = "cometd_bridge_possible_gaps_total"
        labels = {"endpoint": "plain", "reason": "response_lost"}
        await eventually(lambda: metric(sup, gaps, **labels) >= 1, 15, "the lost response counted")
        assert metric(sup, gaps, **labels) == 1
