"""RS256 assertions verified with the public half of a generated key."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from bridge.auth import SalesforceJwt
from bridge.auth.jwt import build_assertion, load_private_key


def decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_assertion_signature_and_claims(key: rsa.RSAPrivateKey) -> None:
    source = SalesforceJwt("https://login.example.test/", "client-1", "user@example.test", pem(key))
    assertion = source.assertion(now=1_700_000_000.7)

    header_b64, claims_b64, signature_b64 = assertion.split(".")
    assert "=" not in assertion
    assert json.loads(decode(header_b64)) == {"alg": "RS256", "typ": "JWT"}
    assert json.loads(decode(claims_b64)) == {
        "iss": "client-1",
        "sub": "user@example.test",
        "aud": "https://login.example.test",
        "exp": 1_700_000_000 + SalesforceJwt.ASSERTION_LIFETIME,
    }
    key.public_key().verify(
        decode(signature_b64),
        f"{header_b64}.{claims_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_the_audience_may_differ_from_the_token_endpoint(key: rsa.RSAPrivateKey) -> None:
    # An org reached at its My Domain that expects login.salesforce.com as the audience.
    source = SalesforceJwt(
        "https://acme.my.salesforce.com",
        "client-1",
        "user@example.test",
        pem(key),
        audience="https://login.salesforce.com/",
    )
    claims = json.loads(decode(source.assertion(now=1_700_000_000).split(".")[1]))
    assert claims["aud"] == "https://login.salesforce.com"
    assert source.token_url == "https://acme.my.salesforce.com/services/oauth2/token"


def test_tampered_claims_fail_verification(key: rsa.RSAPrivateKey) -> None:
    assertion = build_assertion({"sub": "a"}, key)
    header_b64, _, signature_b64 = assertion.split(".")
    forged = base64.urlsafe_b64encode(b'{"sub":"b"}').rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        key.public_key().verify(
            decode(signature_b64),
            f"{header_b64}.{forged}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )


def test_pkcs1_keys_load(key: rsa.RSAPrivateKey) -> None:
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert load_private_key(traditional.decode()).public_key().public_numbers() == (
        key.public_key().public_numbers()
    )


def test_non_rsa_and_garbage_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="RSA"):
        load_private_key(pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="PEM") as caught:
        load_private_key("-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----")
    assert "not-a-key" not in str(caught.value)
