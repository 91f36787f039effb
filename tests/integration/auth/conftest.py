"""Fixtures for the auth integration tests: a real token endpoint and an RSA key pair."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.auth import Credential, TokenSource
from tests.integration.auth.token_server import TokenServer


MakeCredential = Callable[..., Credential]


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
async def token_server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[TokenServer]:
    server = TokenServer(jwt_public_key=rsa_key.public_key())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_credential() -> AsyncIterator[MakeCredential]:
    """Credentials closed at teardown (their timers and HTTP sessions with them)."""
    made: list[Credential] = []

    def make(source: TokenSource, name: str = "test", **options: object) -> Credential:
        # Test tokens live seconds, not hours: a short minimum interval unless a test sets one.
        options.setdefault("min_interval", 0.1)
        credential = Credential(name, source, **options)  # type: ignore[arg-type]
        made.append(credential)
        return credential

    yield make
    for credential in made:
        await credential.aclose()
