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
import textwrap
from collections.abc import Sequence

import structlog

from bridge import __version__
from bridge.logging import configure_logging
from bridge.positions import cli as positions_cli
from bridge.settings import (
    ConfigError,
    Endpoint,
    Settings,
    load_settings,
    redacted_dump,
    suggest_variable,
    unknown_variables,
    value_sources,
)


__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


_CONFIGURATION_HELP = """\
configuration (environment variables, or a YAML file with the same fields):
  BRIDGE_ENDPOINTS           JSON object: endpoint name -> {"url", "channels", ...}
  BRIDGE_ENDPOINTS__<NAME>__<FIELD>
                             one field of one endpoint (NAME is lower-cased)
  BRIDGE_CONFIG_FILE         YAML file (amqp_url:, endpoints: {name: {...}}, ...);
                             environment variables override it field by field
  BRIDGE_AMQP_URL            amqp:// or amqps:// URL (default amqp://guest:guest@127.0.0.1:5672/)
  BRIDGE_AMQP_CA_FILE, BRIDGE_AMQP_CERT_FILE, BRIDGE_AMQP_KEY_FILE
                             TLS to RabbitMQ: private CA, client certificate and key
  BRIDGE_STATE_DIR           replay positions (default ./state)
  BRIDGE_HTTP_PORT           /metrics /healthz /readyz /status (default 8080)
  BRIDGE_LOG_LEVEL, BRIDGE_LOG_FORMAT
  any secret <FIELD> may be given as <FIELD>_FILE (a path), e.g. BRIDGE_AMQP_URL_FILE
  endpoint fields: url channels connection_types exchange exchange_type routing_key
  replay replay_fallback gap_policy ack auth headers ca_file max_pending_count ...

exit codes: 0 ok, 1 runtime failure, 2 invalid configuration
"""

_TOP_EXAMPLES = """\
examples:
  BRIDGE_ENDPOINTS='{"orders": {"url": "https://cometd.example.com/cometd",
    "channels": ["/event/Order__e"]}}' cometd-bridge check-config
  BRIDGE_CONFIG_FILE=/etc/cometd-bridge.yaml cometd-bridge check-config --connect
  BRIDGE_CONFIG_FILE=/etc/cometd-bridge.yaml cometd-bridge run
  cometd-bridge demo --rate 20
  cometd-bridge positions show
"""


def _sub(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, example: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        # Raw formatting keeps the example's line breaks, so the description is wrapped here.
        description=textwrap.fill(help[:1].upper() + help[1:] + ".", 79),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometd-bridge",
        description="Forward CometD (Bayeux) streams into RabbitMQ: nothing lost, observable.",
        epilog=_CONFIGURATION_HELP + "\n" + _TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cometd-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _sub(
        sub,
        "run",
        "run the bridge (the default command)",
        "BRIDGE_CONFIG_FILE=/etc/cometd-bridge.yaml cometd-bridge run",
    )
    check = _sub(
        sub,
        "check-config",
        "validate the configuration and print it, secrets hidden, with where each value came "
        "from (env, file or default) on stderr",
        "BRIDGE_CONFIG_FILE=bridge.yaml cometd-bridge check-config --connect",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also fetch each token, handshake with each endpoint (no subscription), connect "
        "to RabbitMQ and look up the exchanges; one ok/FAIL line per check, exit 1 on a FAIL",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds each --connect check may take (default 15)",
    )
    demo = _sub(
        sub,
        "demo",
        "stream an embedded demo CometD source into the local RabbitMQ",
        "cometd-bridge demo --rate 20 --count 100",
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
            "unknown environment variable ignored (typo?)",
            variable=name,
            did_you_mean=suggest_variable(name),
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


def cmd_check_config(connect: bool = False, timeout: float = 15.0) -> int:
    settings = _load()
    try:
        _build_auth(settings)
    except ValueError as exc:
        print("cometd-bridge: invalid configuration:", file=sys.stderr)
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for name in unknown_variables():
        close = suggest_variable(name)
        hint = f"did you mean {close}?" if close else "typo?"
        print(f"warning: {name} matches no setting ({hint})", file=sys.stderr)
    for name, endpoint in settings.endpoints.items():
        if endpoint.replay == "off" and _looks_salesforce(endpoint):
            print(
                f"warning: endpoint {name}: replay is off on a Salesforce endpoint; events "
                "published while the bridge is down are lost (set replay: stored)",
                file=sys.stderr,
            )
    print(json.dumps(redacted_dump(settings), indent=2, default=str))
    print("where each value came from:", file=sys.stderr)
    for path, origin in value_sources().items():
        print(f"  {path}: {origin}", file=sys.stderr)
    if not connect:
        return EXIT_OK
    return asyncio.run(_connect_checks(settings, timeout))


def _looks_salesforce(endpoint: Endpoint) -> bool:
    url = endpoint.url or ""
    return (
        endpoint.auth.kind == "salesforce_jwt" or ".salesforce.com" in url or ("force.com" in url)
    )


def _build_auth(settings: Settings) -> None:
    """What run does with each endpoint's auth before any network: a failure here would make
    run refuse to start, so check-config refuses too."""
    from bridge.auth import CredentialRegistry
    from bridge.auth.factory import extension_for

    registry = CredentialRegistry()
    for name, endpoint in settings.endpoints.items():
        try:
            extension_for(registry, endpoint.auth, name, state_dir=settings.state_dir)
        except Exception as exc:
            raise ValueError(f"BRIDGE_ENDPOINTS: {name}.auth: {exc}") from None


async def _connect_checks(settings: Settings, step_limit: float) -> int:
    from bridge.connectivity import run_checks

    failed = 0
    print("connecting with these settings:", flush=True)
    try:
        async for check in run_checks(settings, step_limit):
            failed += check.status == "FAIL"
            print(check.line(), flush=True)
    except Exception as exc:  # a check that broke is a failed check, not a traceback
        failed += 1
        print(f"FAIL checks stopped: {type(exc).__name__}", flush=True)
    print("all checks passed" if not failed else f"{failed} check(s) failed", flush=True)
    return EXIT_FAILURE if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cometd-bridge``; returns the process exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    command = args.command or "run"
    try:
        if command == "run":
            return cmd_run()
        if command == "check-config":
            return cmd_check_config(connect=args.connect, timeout=args.timeout)
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
