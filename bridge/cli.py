"""``cometd-bridge run | check-config | demo | positions`` (also ``python -m bridge``).

Exit codes: 0 success (including a graceful shutdown), 1 runtime failure, 2 invalid
configuration (one line per problem, naming the environment variable; no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

import structlog

from bridge import __version__
from bridge.logging import configure_logging
from bridge.positions import cli as positions_cli
from bridge.settings import ConfigError, Settings, load_settings, redacted_dump, unknown_variables


__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometd-bridge",
        description="Forward CometD (Bayeux) streams into RabbitMQ. Configured by BRIDGE_* "
        "environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"cometd-bridge {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bridge (default)")
    sub.add_parser("check-config", help="validate the configuration and print it, secrets hidden")
    demo = sub.add_parser(
        "demo", help="stream an embedded demo CometD source into the local RabbitMQ"
    )
    demo.add_argument("--rate", type=float, default=5.0, help="demo events per second (5)")
    demo.add_argument(
        "--count", type=int, default=0, help="stop after this many messages arrived (0: never)"
    )
    demo.add_argument("--http-port", type=int, default=8080, help="metrics/health port (8080)")
    positions_cli.add_subparser(sub)
    return parser


def _load(env: dict[str, str] | None = None) -> Settings:
    try:
        return load_settings(env)
    except ConfigError as exc:
        print("cometd-bridge: invalid configuration:", file=sys.stderr)
        print(exc.render(), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _warn_unknown() -> None:
    for name in unknown_variables():
        structlog.get_logger("bridge").warning(
            "unknown environment variable ignored (typo?)", variable=name
        )


def cmd_run() -> int:
    settings = _load()
    configure_logging(settings.log_level, settings.log_format)
    _warn_unknown()
    from bridge.supervisor import StartupRefused, Supervisor

    try:
        left = asyncio.run(Supervisor(settings).run())
    except StartupRefused as exc:
        print(f"cometd-bridge: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK if left == 0 else EXIT_FAILURE


def cmd_check_config() -> int:
    settings = _load()
    for name in unknown_variables():
        print(f"warning: {name} matches no setting (typo?)", file=sys.stderr)
    print(json.dumps(redacted_dump(settings), indent=2, default=str))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cometd-bridge``; returns the process exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    command = args.command or "run"
    try:
        if command == "run":
            return cmd_run()
        if command == "check-config":
            return cmd_check_config()
        if command == "demo":
            from bridge.demo.runner import run_demo

            return run_demo(rate=args.rate, count=args.count, http_port=args.http_port)
        if command == "positions":
            return int(positions_cli.run(args, os.environ))
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_FAILURE
