"""Failure replies classified by meaning, not by code alone: the client library's classifier.

Servers disagree on codes: Faye says ``401:<id>:Unknown client`` for a lost session, Salesforce
``403::Unknown client``, and a Salesforce token expiry is ``401::Authentication invalid`` or a
``403::Handshake denied`` whose ``ext.sfdc.failureReason`` starts with ``401``. Re-authenticating
on every 401/403 wastes token requests on session loss and hammers quota errors, so each
failure is mapped to the action it calls for:

- ``auth``: refresh the token (single-flight), then a fresh handshake;
- ``unknown_session``: re-handshake, keep the token;
- ``quota``: long backoff, a metric labelled with a bounded ``limit``, a log line naming it;
- ``denied``/``other``: whatever the advice says.

The one reading of Bayeux error texts lives in :mod:`bridge.cometd.protocol` (the client
decides its next step from it); auth re-exports it so that the token refresh and the quota
metric can never disagree with the client about what a reply means.
"""

from __future__ import annotations

from bridge.cometd.protocol import LIMIT_LABELS, Failure, FailureKind, classify_failure, limit_label


__all__ = ["FailureKind", "Failure", "classify_failure", "limit_label", "LIMIT_LABELS"]
