"""``cometd-bridge positions show | set | clear``: inspect and reset stored replay positions.

Reads and writes the files of :class:`bridge.positions.PositionStore` under
``BRIDGE_STATE_DIR`` (default ``./state``; ``--state-dir`` overrides). Run ``set``/``clear``
while the bridge is stopped: a running bridge rewrites the file from memory at its next flush.

Wiring (in ``bridge.cli``): ``add_subparser(subparsers)`` then, for ``args.command ==
"positions"``, ``run(args, os.environ)`` returns the exit code (0 ok, 1 failure).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from bridge.positions import PositionStore, PositionStoreError, StoredPosition


__all__ = ["add_subparser", "run", "show", "set_position", "clear_position"]

DEFAULT_STATE_DIR = "./state"


def add_subparser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``positions`` with its ``show``, ``set`` and ``clear`` subcommands."""
    parser = subparsers.add_parser(
        "positions",
        help="show or reset stored replay positions",
        description="Stored replay positions (per endpoint and channel) under BRIDGE_STATE_DIR. "
        "Change them only while the bridge is stopped.",
    )
    parser.add_argument(
        "--state-dir", help=f"state directory (default: $BRIDGE_STATE_DIR or {DEFAULT_STATE_DIR})"
    )
    actions = parser.add_subparsers(dest="positions_command", required=True)
    show_parser = actions.add_parser("show", help="print every stored position and its age")
    show_parser.add_argument("endpoint", nargs="?", help="only this endpoint")
    show_parser.add_argument("--json", action="store_true", help="machine-readable output")
    set_parser = actions.add_parser(
        "set", help="store a position: ID resumes after event ID; -1 new only; -2 all retained"
    )
    set_parser.add_argument("endpoint")
    set_parser.add_argument("channel")
    set_parser.add_argument("replay_id", type=_replay_id, metavar="ID")
    clear_parser = actions.add_parser(
        "clear", help="forget a channel's position (the endpoint's replay setting applies)"
    )
    clear_parser.add_argument("endpoint")
    clear_parser.add_argument("channel")


def _replay_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < -2:
        raise argparse.ArgumentTypeError("a replay id is >= 0, or -1 (new) / -2 (all)")
    return value


def run(args: argparse.Namespace, env: Mapping[str, str], out: IO[str] | None = None) -> int:
    """Execute the parsed ``positions`` command; returns the process exit code."""
    out = out or sys.stdout
    state_dir = args.state_dir or env.get("BRIDGE_STATE_DIR") or DEFAULT_STATE_DIR
    store = PositionStore(state_dir)
    try:
        if args.positions_command == "show":
            show(store, out, endpoint=args.endpoint, as_json=args.json)
        elif args.positions_command == "set":
            set_position(store, args.endpoint, args.channel, args.replay_id)
            print(f"{args.endpoint} {args.channel}: replay id set to {args.replay_id}", file=out)
        elif args.positions_command == "clear":
            clear_position(store, args.endpoint, args.channel)
            print(f"{args.endpoint} {args.channel}: position cleared", file=out)
        else:  # pragma: no cover - argparse enforces the choices
            return 2
    except (PositionStoreError, ValueError) as exc:
        print(f"cometd-bridge positions: {exc}", file=sys.stderr)
        return 1
    return 0


def show(
    store: PositionStore,
    out: IO[str],
    *,
    endpoint: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> None:
    """Print the stored positions (one endpoint, or all), with their age in seconds."""
    t = time.time() if now is None else now
    endpoints = [endpoint] if endpoint else store.endpoints()
    rows: list[dict[str, Any]] = []
    for name in endpoints:
        for channel, pos in sorted(store.load(name).items()):
            rows.append(
                {
                    "endpoint": name,
                    "channel": channel,
                    "replay_id": pos.replay_id,
                    "updated_at": _iso(pos.updated_at),
                    "age_seconds": round(max(0.0, t - pos.updated_at), 3),
                    "event_time": pos.event_time,
                }
            )
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    if not rows:
        print(f"no stored positions in {store.state_dir}", file=out)
        return
    header = ("ENDPOINT", "CHANNEL", "REPLAY_ID", "UPDATED_AT", "AGE", "EVENT_TIME")
    table = [header] + [
        (
            r["endpoint"],
            r["channel"],
            str(r["replay_id"]),
            r["updated_at"],
            _age(r["age_seconds"]),
            r["event_time"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def set_position(store: PositionStore, endpoint: str, channel: str, replay_id: int) -> None:
    """Store ``replay_id`` as ``channel``'s position (the next start replays after it)."""
    store.update(endpoint, channel, StoredPosition(replay_id, time.time()))


def clear_position(store: PositionStore, endpoint: str, channel: str) -> None:
    """Remove ``channel``'s position; raises ValueError if there is none."""
    if channel not in store.load(endpoint):
        raise ValueError(f"no stored position for {endpoint} {channel}")
    store.update(endpoint, channel, None)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
