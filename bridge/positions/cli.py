"""``cometd-bridge positions show | set | clear``: inspect and reset stored replay positions.

Reads and writes the files of :class:`bridge.positions.PositionStore` under
``BRIDGE_STATE_DIR`` (default ``./state``; ``--state-dir`` overrides). ``set``/``clear`` take
the state directory's lock (:mod:`bridge.positions.lock`) and refuse while a bridge holds it (it
would rewrite the file from memory at its next flush); ``show`` only reads, never changes a
file, and works while the bridge runs. After a corrupt file, ``set`` or ``clear`` writes a new
file: that is the operator's decision the endpoint waits for (the corrupt copy is kept).

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

from pydantic import TypeAdapter, ValidationError

from bridge.positions import (
    CorruptPositionFile,
    PositionStore,
    PositionStoreError,
    StoredPosition,
)
from bridge.positions.lock import StateDirLock, StateDirLocked, held_by
from bridge.settings import Channel


__all__ = ["add_subparser", "run", "show", "set_position", "clear_position"]

DEFAULT_STATE_DIR = "./state"


def add_subparser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``positions`` with its ``show``, ``set`` and ``clear`` subcommands."""
    parser = subparsers.add_parser(
        "positions",
        help="show or reset stored replay positions",
        description="Stored replay positions (per endpoint and channel) under BRIDGE_STATE_DIR. "
        "Change them only while the bridge is stopped.",
        epilog="examples:\n  cometd-bridge positions show\n"
        "  cometd-bridge positions set orders /event/Order__e 1234\n"
        "  cometd-bridge positions clear orders /event/Order__e",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir", help=f"state directory (default: $BRIDGE_STATE_DIR or {DEFAULT_STATE_DIR})"
    )
    actions = parser.add_subparsers(dest="positions_command", required=True)
    show_parser = actions.add_parser(
        "show",
        help="print every stored position and its age",
        epilog="example:\n  cometd-bridge positions show orders --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show_parser.add_argument("endpoint", nargs="?", help="only this endpoint")
    show_parser.add_argument("--json", action="store_true", help="machine-readable output")
    set_parser = actions.add_parser(
        "set",
        help="store a position: ID resumes after event ID; -1 new only; -2 all retained",
        epilog="example (the bridge stopped):\n"
        "  cometd-bridge positions set orders /event/Order__e 1234",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    set_parser.add_argument("endpoint")
    set_parser.add_argument("channel", type=_channel, help="a concrete channel: /event/Order__e")
    set_parser.add_argument("replay_id", type=_replay_id, metavar="ID")
    clear_parser = actions.add_parser(
        "clear",
        help="forget a channel's position (the endpoint's replay setting applies)",
        epilog="example (the bridge stopped):\n"
        "  cometd-bridge positions clear orders /event/Order__e",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clear_parser.add_argument("endpoint")
    clear_parser.add_argument("channel", type=_channel, help="a concrete channel: /event/Order__e")


def _channel(text: str) -> str:
    # Positions are kept per concrete channel exactly as the endpoint subscribes to it: a name
    # without its leading slash (or with a wildcard) would be stored and never read.
    try:
        TypeAdapter(Channel).validate_python(text)
    except ValidationError as exc:
        reason = exc.errors(include_input=False, include_url=False)[0]["msg"]
        raise argparse.ArgumentTypeError(f"{text!r}: {reason}") from None
    if text.endswith(("/*", "/**")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: positions are per concrete channel, not a wildcard"
        )
    return text


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
    if env.get("BRIDGE_COORDINATION") == "rabbitmq":
        # The positions live in RabbitMQ; set/clear take the endpoint's lease first.
        from aiormq.exceptions import AMQPError

        from bridge.positions.rabbitmq_cli import LeaseBusy, run_rabbitmq

        try:
            return run_rabbitmq(args, env, out, _print_rows)
        except (LeaseBusy, AMQPError, PositionStoreError, ValueError, OSError) as exc:
            print(f"cometd-bridge positions: {exc}", file=sys.stderr)
            return 1
    state_dir = args.state_dir or env.get("BRIDGE_STATE_DIR") or DEFAULT_STATE_DIR
    store = PositionStore(state_dir)
    command = args.positions_command
    try:
        if command == "show":
            holder = held_by(state_dir)
            if holder is not None:
                print(
                    f"note: a running cometd-bridge (pid {holder or '?'}) uses {state_dir}; "
                    "its positions in memory may be ahead of these (see /status)",
                    file=sys.stderr,
                )
            return show(store, out, endpoint=args.endpoint, as_json=args.json)
        with StateDirLock(state_dir):
            if command == "set":
                note = set_position(store, args.endpoint, args.channel, args.replay_id)
                print(
                    f"{args.endpoint} {args.channel}: replay id set to {args.replay_id}", file=out
                )
            elif command == "clear":
                note = clear_position(store, args.endpoint, args.channel)
                print(f"{args.endpoint} {args.channel}: position cleared", file=out)
            else:  # pragma: no cover - argparse enforces the choices
                return 2
        if note:
            print(note, file=out)
    except StateDirLocked as exc:
        print(
            f"cometd-bridge positions: {exc}: positions can be changed only while the bridge "
            "is stopped",
            file=sys.stderr,
        )
        return 1
    except (PositionStoreError, ValueError, OSError) as exc:
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
) -> int:
    """Print the stored positions (one endpoint, or all), with their age in seconds; report
    corrupt files on stderr (changing nothing). Returns the exit code (1 if any is corrupt)."""
    t = time.time() if now is None else now
    endpoints = [endpoint] if endpoint else store.endpoints(with_corrupt_copies=True)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for name in endpoints:
        try:
            positions = store.read(name)
        except CorruptPositionFile as exc:
            problems.append(str(exc))
            continue
        if not positions and not store.exists(name) and (copies := store.corrupt_copies(name)):
            problems.append(
                f"{name}: the positions file was set aside as corrupt ({copies[-1]}); the "
                f"endpoint will not start until `positions set` or `positions clear` runs"
            )
        for channel, pos in sorted(positions.items()):
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
    for problem in problems:
        print(f"cometd-bridge positions: {problem}", file=sys.stderr)
    _print_rows(store, rows, out, as_json)
    return 1 if problems else 0


def _print_rows(
    store: PositionStore, rows: list[dict[str, Any]], out: IO[str], as_json: bool
) -> None:
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


def set_position(store: PositionStore, endpoint: str, channel: str, replay_id: int) -> str | None:
    """Store ``replay_id`` as ``channel``'s position (the next start replays after it).

    Returns a note for the operator when a corrupt file was found (and kept aside)."""
    positions, note = _load_for_change(store, endpoint)
    positions[channel] = StoredPosition(replay_id, time.time())
    store.save(endpoint, positions)
    return note


def clear_position(store: PositionStore, endpoint: str, channel: str) -> str | None:
    """Remove ``channel``'s position; raises ValueError if there is none (unless the file
    was corrupt: then an empty file is written, so the endpoint starts from replay_fallback)."""
    positions, note = _load_for_change(store, endpoint)
    if channel not in positions and note is None:
        raise ValueError(f"no stored position for {endpoint} {channel}")
    positions.pop(channel, None)
    store.save(endpoint, positions)
    return note


def _load_for_change(
    store: PositionStore, endpoint: str
) -> tuple[dict[str, StoredPosition], str | None]:
    """The positions to change, and a note when the file is (or was set aside as) corrupt:
    the new file written from them is the decision the endpoint waits for."""
    try:
        positions = store.load(endpoint)  # a corrupt file is moved aside, kept for inspection
    except CorruptPositionFile as exc:
        return {}, (
            f"note: the corrupt positions file was kept as {exc.aside}; a new file was written "
            "(channels without a position start from replay_fallback)"
        )
    copies = store.corrupt_copies(endpoint)
    if not positions and copies and not store.exists(endpoint):
        return positions, (
            f"note: the positions file had been set aside as corrupt ({copies[-1].name}); a new "
            "file was written (channels without a position start from replay_fallback)"
        )
    return positions, None


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
