"""The narrow interface through which auth reports to metrics; the daemon wires Prometheus."""

from __future__ import annotations

from typing import Any, Literal, Protocol


__all__ = ["AuthHooks", "NullAuthHooks", "PrometheusAuthHooks", "RefreshResult"]

RefreshResult = Literal["success", "failure"]


class AuthHooks(Protocol):
    def token_refreshed(self, credential: str, result: RefreshResult) -> None:
        """One token request finished (``token_refreshes_total{credential,result}``)."""

    def token_expiry(self, credential: str, expires_at: float | None) -> None:
        """A new token is in use (``token_expiry_timestamp_seconds{credential}``)."""


class NullAuthHooks:
    def token_refreshed(self, credential: str, result: RefreshResult) -> None:
        pass

    def token_expiry(self, credential: str, expires_at: float | None) -> None:
        pass


class PrometheusAuthHooks:
    """Adapts the two metrics of the contract, passed in so this module defines none.

    ``refreshes`` is the ``token_refreshes_total`` counter (labels ``credential``, ``result``),
    ``expiry`` the ``token_expiry_timestamp_seconds`` gauge (label ``credential``).
    """

    def __init__(self, refreshes: Any, expiry: Any) -> None:
        self._refreshes = refreshes
        self._expiry = expiry

    def token_refreshed(self, credential: str, result: RefreshResult) -> None:
        self._refreshes.labels(credential=credential, result=result).inc()

    def token_expiry(self, credential: str, expires_at: float | None) -> None:
        # A token without expiry reports +Inf: "time until expiry" alerts stay quiet for it.
        value = float("inf") if expires_at is None else expires_at
        self._expiry.labels(credential=credential).set(value)
