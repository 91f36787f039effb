"""Command line entry point (placeholder until the daemon lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``cometd-bridge``; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    print(f"cometd-bridge: command {args!r} is not implemented yet", file=sys.stderr)
    return 2
