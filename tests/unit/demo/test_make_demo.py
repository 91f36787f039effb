"""``make demo`` with BRIDGE_AMQP_URL set uses that broker: no local rabbitmq-server needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "ensure-rabbitmq.sh"


def ensure(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A PATH with bash only: no rabbitmq-server, and nothing answers on the port we use.
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(SCRIPT), *args],
        env={"PATH": str(bindir), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_with_bridge_amqp_url_the_local_broker_is_not_required(tmp_path: Path) -> None:
    done = ensure(tmp_path, "--unless-amqp-url", BRIDGE_AMQP_URL="amqp://u:p@rabbit.example:5672/")
    assert done.returncode == 0, done.stderr
    assert "not checking for a local broker" in done.stdout


def test_the_make_demo_target_passes_the_flag() -> None:
    make = shutil.which("make")
    if make is None:  # pragma: no cover - make is how the project is built
        pytest.fail("make is not installed")
    env = {**os.environ, "BRIDGE_AMQP_URL": "amqp://u:p@rabbit.example:5672/"}
    done = subprocess.run(
        [make, "-n", "-C", str(ROOT), "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "bash scripts/ensure-rabbitmq.sh --unless-amqp-url" in lines, done.stdout
    assert "bash scripts/ensure-rabbitmq.sh" not in lines, "the unconditional broker check ran"
