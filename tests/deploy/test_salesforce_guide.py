"""docs/salesforce.md's commands work as written.

The guide's configuration blocks are run by bash, as an operator pastes them, with the
secret paths pointed at files made here; each ends in ``cometd-bridge check-config``, which
exits 2 on a misspelt variable or a key that does not parse. The key itself is made by the
guide's own openssl commands. Its links into deploy/README.md must reach a heading.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_alert_runbooks import github_anchors


ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "salesforce.md"
DEPLOY_README = ROOT / "deploy" / "README.md"

_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sh_blocks() -> list[str]:
    return _SH_BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def run_block(block: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run a block with only PATH set and ``cometd-bridge`` meaning this checkout's CLI."""
    script = (
        f'cometd-bridge() {{ "{sys.executable}" -m bridge "$@"; }}\n'
        "set -euo pipefail\n" + block.replace("/run/secrets/", f"{workdir}/")
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's key and certificate made by its openssl block; a client secret file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    workdir = tmp_path_factory.mktemp("sf-secrets")
    (openssl_block,) = [b for b in sh_blocks() if b.lstrip().startswith("openssl req")]
    result = run_block(openssl_block, workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "sf-bridge.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    (workdir / "sf_client_secret").write_text("not-a-real-secret\n")
    return workdir


def config_blocks() -> list[str]:
    blocks = [b for b in sh_blocks() if "check-config" in b and "BRIDGE_ENDPOINTS=" in b]
    assert len(blocks) == 2, "expected the JWT and the client credentials examples"
    return blocks


@pytest.mark.parametrize("index", [0, 1], ids=["salesforce_jwt", "client_credentials"])
def test_configuration_examples_pass_check_config(index: int, secrets_dir: Path) -> None:
    block = config_blocks()[index]
    result = run_block(block, secrets_dir)
    assert result.returncode == 0, f"check-config refused the guide's example:\n{result.stderr}"
    kind = re.search(r"AUTH__KIND=(\w+)", block)
    assert kind is not None
    assert f'"kind": "{kind.group(1)}"' in result.stdout
    assert '"replay": "stored"' in result.stdout


def test_a_misspelt_field_in_an_example_is_caught(secrets_dir: Path) -> None:
    # The check above can fail: the same block with one field name wrong exits 2.
    block = config_blocks()[0].replace("AUTH__USERNAME=", "AUTH__USER_NAME=")
    result = run_block(block, secrets_dir)
    assert result.returncode == 2, result.stdout + result.stderr


def test_links_into_deploy_readme_reach_a_heading() -> None:
    anchors = github_anchors(DEPLOY_README.read_text(encoding="utf-8"))
    links = re.findall(r"\]\(\.\./deploy/README\.md#([^)]+)\)", GUIDE.read_text(encoding="utf-8"))
    assert links, "the guide links the positions procedure and the runbooks"
    missing = [link for link in links if link not in anchors]
    assert not missing, f"no heading in deploy/README.md for: {missing}"
