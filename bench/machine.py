"""A one-paragraph description of the machine a benchmark ran on (figures vary by machine;
the ratios within one run are what carries over)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any


__all__ = ["describe"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _node_version() -> str:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not found"


def _optional(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "installed"))


def describe(server_properties: dict[str, Any]) -> dict[str, str]:
    """CPU, cores, RAM, OS, Python, Node, RabbitMQ (from the broker's own handshake)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_ram_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": _node_version(),
        "rabbitmq": text(server_properties.get("version", "unknown")),
        "erlang": text(server_properties.get("platform", "unknown")),
        "uvloop": _optional("uvloop"),
        "orjson": _optional("orjson"),
    }


def markdown_header(machine: dict[str, str], elapsed: float) -> list[str]:
    """The lines every bench report starts with: the machine, the command and its duration."""
    out = ["### Machine", ""]
    out += [f"- {k}: {v}" for k, v in machine.items()]
    out += ["", f"Run: `{' '.join(sys.argv)}`, {elapsed:.0f} s in total.", ""]
    return out
