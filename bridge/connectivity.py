"""``check-config --connect``: try the configured settings against the real services.

Per endpoint: fetch a token (when it has auth), handshake and ``/meta/connect`` once (no
subscription, so no event is taken from a server that delivers each once), then
``/meta/disconnect``. Then RabbitMQ: connect (with the configured TLS) and look up every
exchange with a passive declare, which changes nothing on the broker. Each check yields one
:class:`Check`; nothing here retries, and every step is bounded by ``step_limit`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions

from bridge.auth import CredentialRegistry
from bridge.auth.factory import extension_for, resolve_endpoint_url
from bridge.cometd import Client, ConnectionType
from bridge.settings import Endpoint, Settings, mask_url
from bridge.tls import client_context


__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``status`` is ``ok``, ``FAIL`` or ``warn`` (not a failure)."""

    status: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what}: {self.detail}"


def _reason(exc: BaseException) -> str:
    # Our own errors carry no secrets; a library's message may echo a URL, so mask URLs.
    text = str(exc).strip() or type(exc).__name__
    return mask_url(text)[:300] if "://" in text else text[:300]


async def run_checks(settings: Settings, step_limit: float = 15.0) -> AsyncIterator[Check]:
    """Every check in order; the caller prints each as it comes."""
    registry = CredentialRegistry()
    try:
        for name, endpoint in settings.endpoints.items():
            async for check in _endpoint_checks(name, endpoint, settings, registry, step_limit):
                yield check
    finally:
        await registry.aclose()
    async for check in _amqp_checks(settings, step_limit):
        yield check


async def _endpoint_checks(
    name: str,
    endpoint: Endpoint,
    settings: Settings,
    registry: CredentialRegistry,
    step_limit: float,
) -> AsyncIterator[Check]:
    extension = extension_for(registry, endpoint.auth, name, state_dir=Path(settings.state_dir))
    if extension is not None:
        try:
            token = await asyncio.wait_for(extension.credential.get(), step_limit)
        except Exception as exc:
            yield Check("FAIL", f"endpoint {name} token", _reason(exc))
            return
        left = "" if token.expires_at is None else f", expires in {_expires_in(token.expires_at)}"
        yield Check("ok", f"endpoint {name} token", f"credential {extension.credential.name}{left}")
    try:
        url = await asyncio.wait_for(resolve_endpoint_url(endpoint, extension), step_limit)
    except Exception as exc:
        yield Check("FAIL", f"endpoint {name} url", _reason(exc))
        return
    client = Client(
        url,
        [ConnectionType(t) for t in endpoint.connection_types],
        connection_timeout=endpoint.connection_timeout,
        auth=extension,
        headers=endpoint.headers,
        ssl=client_context(endpoint.ca_file),
    )
    try:
        await asyncio.wait_for(client.open(), step_limit)
    except Exception as exc:
        await _close(client, step_limit)
        yield Check("FAIL", f"endpoint {name} handshake", f"{mask_url(url)}: {_reason(exc)}")
        return
    kind = client.connection_type.value if client.connection_type is not None else "?"
    await _close(client, step_limit)
    yield Check("ok", f"endpoint {name} handshake", f"{mask_url(url)} ({kind})")


async def _close(client: Client, step_limit: float) -> None:
    # /meta/disconnect is a courtesy: the server expires the session anyway.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), step_limit)


def _expires_in(expires_at: float) -> str:
    import time

    return f"{max(0.0, expires_at - time.time()):.0f} s"


async def _amqp_checks(settings: Settings, step_limit: float) -> AsyncIterator[Check]:
    url = settings.amqp_url.get_secret_value()
    shown = mask_url(url)
    context = client_context(settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file)
    try:
        connection = await asyncio.wait_for(
            aio_pika.connect(
                url,
                ssl_context=context,
                client_properties={
                    "connection_name": f"cometd-bridge check-config/{socket.gethostname()}"
                },
            ),
            step_limit,
        )
    except Exception as exc:
        yield Check("FAIL", "rabbitmq", f"{shown}: {_reason(exc)}")
        return
    try:
        yield Check("ok", "rabbitmq", f"{shown} connected")
        exchanges = {settings.control_exchange}
        for endpoint in settings.endpoints.values():
            exchanges.add(endpoint.exchange)
            if endpoint.alternate_exchange:
                exchanges.add(endpoint.alternate_exchange)
        for exchange in sorted(exchanges):
            yield await _exchange_check(connection, exchange, step_limit)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def _exchange_check(
    connection: aio_pika.abc.AbstractConnection, name: str, step_limit: float
) -> Check:
    # A failed passive declare closes its channel: one short-lived channel per exchange.
    try:
        channel = await asyncio.wait_for(connection.channel(publisher_confirms=False), step_limit)
    except Exception as exc:
        return Check("FAIL", f"exchange {name}", f"cannot open a channel: {_reason(exc)}")
    try:
        await asyncio.wait_for(channel.get_exchange(name, ensure=True), step_limit)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return Check(
            "warn",
            f"exchange {name}",
            "does not exist yet; run declares it (the user needs configure permission)",
        )
    except aiormq.exceptions.ChannelAccessRefused as exc:
        return Check("FAIL", f"exchange {name}", f"access refused: {_reason(exc)}")
    except Exception as exc:
        return Check("FAIL", f"exchange {name}", _reason(exc))
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
    return Check("ok", f"exchange {name}", "exists")
