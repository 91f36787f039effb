"""deploy/README.md's stop, ``positions set``, start procedure fits the manifests and the CLI.

The one-off Job must mount the Deployment's PVC where the bridge keeps its state, run as the
same user and image, and pass arguments the real ``cometd-bridge positions`` accepts; the
compose commands likewise. Run here against a temporary state directory, each command must
do what the procedure says (set, show, clear).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
README = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def job() -> Any:
    match = re.search(r"cat <<'YAML' \| kubectl apply -f -\n(.*?)\nYAML\n", README, re.DOTALL)
    assert match, "deploy/README.md has no Job manifest for positions set|clear"
    return yaml.safe_load(match.group(1))


def cli(args: list[str], state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    env["BRIDGE_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_job_uses_the_deployments_volume_user_and_image() -> None:
    deployment = load(KUBE / "deployment.yaml")["spec"]["template"]["spec"]
    state_dir = load(KUBE / "configmap.yaml")["data"]["BRIDGE_STATE_DIR"]
    images = load(KUBE / "kustomization.yaml")["images"][0]
    spec = job()["spec"]["template"]["spec"]
    (container,) = spec["containers"]

    (pvc,) = [v for v in deployment["volumes"] if "persistentVolumeClaim" in v]
    (job_volume,) = spec["volumes"]
    assert job_volume["persistentVolumeClaim"] == pvc["persistentVolumeClaim"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == state_dir
    assert container["args"][:3] == ["positions", "--state-dir", state_dir]
    assert spec["securityContext"] == deployment["securityContext"]
    assert container["image"] == f"{images['newName']}:{images['newTag']}"
    assert spec["restartPolicy"] == "Never"


def test_job_arguments_do_what_the_procedure_says(tmp_path: Path) -> None:
    args = job()["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [str(tmp_path) if a.startswith("/var/lib/") else a for a in args]
    result = cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    shown = cli(["positions", "show", "orders", "--json"], tmp_path)
    stored = {(p["endpoint"], p["channel"]): p["replay_id"] for p in json.loads(shown.stdout)}
    assert stored == {("orders", "/event/Order__e"): 12345}, shown.stdout


def test_compose_commands_are_cli_commands(tmp_path: Path) -> None:
    prefix = "docker compose run --rm --no-deps bridge "
    commands = [line[len(prefix) :] for line in README.splitlines() if line.startswith(prefix)]
    assert len(commands) >= 2, "the compose procedure sets and shows a position"
    for command in commands:
        result = cli(shlex.split(command), tmp_path)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    assert "12345" in cli(["positions", "show", "demo"], tmp_path).stdout


def test_set_refuses_while_the_state_directory_is_locked(tmp_path: Path) -> None:
    # What the procedure warns about: the CLI refuses while a bridge holds the lock.
    from bridge.positions.lock import StateDirLock

    with StateDirLock(tmp_path):
        result = cli(["positions", "set", "demo", "/event/Order__e", "5"], tmp_path)
    assert result.returncode == 1
    assert "stopped" in result.stderr
