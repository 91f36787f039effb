"""RS256 JSON Web Token assertions (RFC 7515/7519) for the JWT bearer grant (RFC 7523).

Only the signing side is needed: the token endpoint verifies. The signature itself comes from
``cryptography`` (PKCS#1 v1.5 with SHA-256, which is what JWS calls RS256).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


__all__ = ["b64url", "build_assertion", "load_private_key"]


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """Parse an unencrypted PEM RSA private key (PKCS#1 or PKCS#8); ValueError otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The library's message never includes key material, but keep ours fixed anyway.
        raise ValueError("private_key is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("private_key must be an RSA key (RS256)")
    return key


def build_assertion(claims: Mapping[str, Any], key: rsa.RSAPrivateKey) -> str:
    """Return the compact serialization ``header.claims.signature`` signed with RS256."""
    header = {"alg": "RS256", "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"
