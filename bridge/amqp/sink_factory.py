"""Which publisher an endpoint gets: the fast one where it is known to work, else the public one.

The fast publisher (``AmqpSink``) takes over aiormq's private confirm and return
frame handling (``Channel._on_confirm_frame``, ``_on_return_frame``, ``_get_frame``,
``_read_content``, ``write_queue``); any aiormq release may rename or rework those. It runs
only on the aiormq versions its tests were run against, :data:`FAST_PATH_AIORMQ`. On any other
aiormq the endpoint gets :class:`~bridge.amqp.public_publisher.PublicApiPublisher`, which uses
aio-pika's public API only: same results and guarantees, at plain aio-pika's cost per message
(several times the fast path's CPU; ``bench/publish_ceiling.py``).
``BRIDGE_AMQP_PUBLISHER`` (``auto``, ``fast``, ``public``) overrides the choice. Both are run
by the same integration tests (``tests/integration/amqp``).

Call :func:`choose_publisher_class` once at start: it logs which one and why.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from typing import Final, Literal, get_args

import aiormq

from bridge.amqp.public_publisher import PublicApiPublisher
from bridge.amqp.publisher import AmqpSink


__all__ = [
    "FAST_PATH_AIORMQ",
    "PublisherClass",
    "PublisherPreference",
    "choose_publisher_class",
    "fast_path_names_present",
    "installed_aiormq_version",
    "publisher_choice",
]

log = logging.getLogger(__name__)

# The aiormq versions the fast publisher's tests were run against: [from, below). Widen it
# only after running tests/integration/amqp with the new aiormq installed (and update the
# aiormq requirement's lower bound in pyproject.toml with the "from" side).
FAST_PATH_AIORMQ: Final = ((7, 2, 4), (7, 3))

# What the fast publisher takes over on ``aiormq.Channel``: if a build lacks one, it is no
# version the fast path was tested with, whatever its version string says.
FAST_PATH_AIORMQ_NAMES: Final = (
    "_on_confirm_frame",
    "_on_return_frame",
    "_get_frame",
    "_read_content",
)

PublisherPreference = Literal["auto", "fast", "public"]
PublisherClass = type[AmqpSink] | type[PublicApiPublisher]

_RELEASE = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")


def installed_aiormq_version() -> str | None:
    """The installed aiormq's version string, or None when its metadata cannot be read."""
    try:
        return importlib.metadata.version("aiormq")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...] | None:
    """``"7.2.4"`` -> ``(7, 2, 4)``; a pre-release counts as its release (``7.3.0rc1`` is
    7.3.0, outside a range that ends below 7.3). None for a string that is no version."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def fast_path_names_present() -> bool:
    """The installed ``aiormq.Channel`` has every method the fast publisher takes over."""
    return all(callable(getattr(aiormq.Channel, name, None)) for name in FAST_PATH_AIORMQ_NAMES)


def publisher_choice(
    aiormq_version: str | None,
    preference: PublisherPreference = "auto",
    *,
    names_present: bool = True,
) -> tuple[PublisherClass, str]:
    """The publisher class for this aiormq version and preference, with the reason (pure)."""
    if preference not in get_args(PublisherPreference):
        raise ValueError(f"publisher must be one of auto, fast, public, not {preference!r}")
    low, below = FAST_PATH_AIORMQ
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, below))}"
    if preference == "fast":
        return AmqpSink, f"forced by BRIDGE_AMQP_PUBLISHER=fast (aiormq {aiormq_version})"
    if preference == "public":
        return PublicApiPublisher, "forced by BRIDGE_AMQP_PUBLISHER=public"
    release = _release(aiormq_version) if aiormq_version else None
    if release is None:
        return (
            PublicApiPublisher,
            f"aiormq version {aiormq_version!r} unknown, fast path tested with aiormq {tested}",
        )
    if low <= release < below and not names_present:
        return (
            PublicApiPublisher,
            f"aiormq {aiormq_version} lacks a method the fast path takes over "
            f"({', '.join(FAST_PATH_AIORMQ_NAMES)})",
        )
    if low <= release < below:
        return AmqpSink, f"aiormq {aiormq_version} is tested with the fast path"
    return (
        PublicApiPublisher,
        f"aiormq {aiormq_version} is not tested with the fast path (tested: {tested})",
    )


def choose_publisher_class(
    aiormq_version: str | None = None, preference: PublisherPreference = "auto"
) -> PublisherClass:
    """The publisher class to build endpoints with; logs the choice and its reason.

    ``aiormq_version`` defaults to the installed one. Call once at start.
    """
    version = aiormq_version if aiormq_version is not None else installed_aiormq_version()
    cls, reason = publisher_choice(version, preference, names_present=fast_path_names_present())
    fallback = cls is PublicApiPublisher and preference == "auto"
    log.log(
        logging.WARNING if fallback else logging.INFO,
        "AMQP publisher: %s (%s)%s",
        "fast" if cls is AmqpSink else "public API",
        reason,
        "; publishing costs several times the CPU per message" if fallback else "",
    )
    return cls
