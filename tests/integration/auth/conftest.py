"""Fixtures for the auth integration tests: a real token endpoint and an RSA key pair."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.auth.token_server import TokenServer


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
