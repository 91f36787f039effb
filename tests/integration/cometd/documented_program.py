"""A program written from the aiocometd "Advanced Usage" page alone.

Only the import changed: ``aiocometd`` is ``bridge.cometd``. Nothing here may use an API the
page does not show (test_documented_program.py checks the imports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.cometd import AuthExtension, Client, ConnectionType, Extension
from bridge.cometd.exceptions import TransportTimeoutError


class MyExtension(Extension):
    async def incoming(self, payload: Any, headers: Any = None) -> None:
        pass

    async def outgoing(self, payload: Any, headers: Any) -> None:
        pass


class MyAuthExtension(AuthExtension):
    async def incoming(self, payload: Any, headers: Any = None) -> None:
        pass

    async def outgoing(self, payload: Any, headers: Any) -> None:
        pass

    async def authenticate(self) -> None:
        # get new JWT
        pass


async def main(
    url: str,
    connection_type: str,
    channel: str,
    handle: Callable[[dict[str, Any]], None],
    connection_timeout: float = 60,
) -> str:
    """Stream ``channel`` until the server is gone for ``connection_timeout`` seconds."""
    client = Client(
        url,
        connection_types=[ConnectionType(connection_type)],
        connection_timeout=connection_timeout,
        max_pending_count=42,
        extensions=[MyExtension()],
        auth=MyAuthExtension(),
    )
    async with client:
        await client.subscribe(channel)
        try:
            while True:
                message = await client.receive()
                handle(message)
        except TransportTimeoutError:
            print(
                "Connection is lost with the server. "
                f"Couldn't reconnect in {connection_timeout} seconds."
            )
            return f"pending={client.pending_count}"
