"""The image's entry command and HEALTHCHECK, exactly as the Dockerfile writes them, run here.

There is no Docker engine on CI machines, so the commands are read from the Dockerfile's
final stage and run outside a container: the HEALTHCHECK against a stand-in HTTP server (it
must pass only on a 200 from ``/healthz``), and ENTRYPOINT + CMD as the real daemon, which
must answer ``/healthz`` while its only endpoint is unreachable (liveness must not depend on
upstreams, or Kubernetes restarts a healthy pod in a loop) and exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent

# The wrapper the image runs as PID 1; outside a container the command after it runs directly.
INIT = ["tini", "--"]
# Upper bounds for waits on another process; reaching one is a failure, not a pass.
START_BOUND = 30.0
SHUTDOWN_TIMEOUT = 5


@dataclass(frozen=True)
class Stage:
    """One build stage: its FROM line and its instructions as (KEYWORD, arguments)."""

    base: str
    instructions: list[tuple[str, str]]

    def last(self, keyword: str) -> str:
        values = [args for kw, args in self.instructions if kw == keyword]
        assert values, f"the final stage has no {keyword}"
        return values[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Dockerfile instructions grouped by stage (comments dropped, continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM parametrise FROM lines
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args.strip())
            stages.append(Stage(base, []))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON-array (exec) form; shell form would make ``sh`` PID 1, which does not forward
    SIGTERM to the bridge."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(v, str) for v in value)
    return value


def healthcheck_command(args: str) -> list[str]:
    """The command of ``HEALTHCHECK [--option=value ...] CMD [...]``."""
    options, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    assert all(o.startswith("--") for o in options.split()), options
    return exec_form(command)


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def entry_command(runtime: Stage) -> list[str]:
    """ENTRYPOINT + CMD as the container runs them, without the init wrapper, with the
    console script resolved in this interpreter's environment."""
    command = exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))
    assert command[: len(INIT)] == INIT, f"expected the {INIT} init wrapper: {command}"
    program, *args = command[len(INIT) :]
    return [str(BIN / program), *args]


def as_local(command: list[str]) -> list[str]:
    """The image's ``python`` is this interpreter."""
    return [sys.executable, *command[1:]] if command[0] == "python" else command


def free_port() -> int:
    # The daemon takes its port from the environment, so it needs a number up front.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_final_stage_is_what_operators_expect(runtime: Stage) -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(stages) >= 2, "multi-stage: build the wheel apart from the runtime"
    assert runtime.base.startswith("python:"), runtime.base
    assert "-slim" in runtime.base, runtime.base
    keywords = [kw for kw, _ in runtime.instructions]
    assert "COPY" in keywords
    assert runtime.last("USER").split(":")[0] == "10001"
    assert runtime.last("EXPOSE") == "8080"
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert "PYTHONUNBUFFERED=1" in " ".join(a for kw, a in runtime.instructions if kw == "ENV")
    assert entry_command(runtime)[0] == str(BIN / "cometd-bridge")
    assert entry_command(runtime)[1:] == ["run"]
    assert healthcheck_command(runtime.last("HEALTHCHECK"))[0] == "python"


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@contextlib.contextmanager
def stand_in(status: int) -> Iterator[int]:
    """A local HTTP server answering ``/healthz`` with ``status``; yields its port."""
    handler = type("Probe", (_Probe,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(runtime: Stage, port: int) -> int:
    command = as_local(healthcheck_command(runtime.last("HEALTHCHECK")))
    env = {**os.environ, "BRIDGE_HTTP_PORT": str(port)}
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_passes_only_on_a_healthy_healthz(runtime: Stage) -> None:
    with stand_in(200) as port:
        assert run_healthcheck(runtime, port) == 0
    with stand_in(503) as port:
        assert run_healthcheck(runtime, port) != 0
    assert run_healthcheck(runtime, free_port()) != 0  # nothing listening


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_entry_command_serves_healthz_and_drains_on_sigterm(runtime: Stage, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_HTTP_HOST": "127.0.0.1",
        "BRIDGE_HTTP_PORT": str(port),
        "BRIDGE_STATE_DIR": str(tmp_path / "state"),
        "BRIDGE_AMQP_URL": os.environ.get(
            "BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
        ),
        # Nothing listens there: liveness must not depend on the upstream.
        "BRIDGE_ENDPOINTS": json.dumps(
            {"dead": {"url": f"http://127.0.0.1:{free_port()}/cometd", "channels": ["/t/x"]}}
        ),
        "BRIDGE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "BRIDGE_LOG_FORMAT": "json",
    }
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            entry_command(runtime), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        healthz = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + START_BOUND
        # Polls: the daemon announces readiness only through this very endpoint.
        while (status := _get(healthz)) is None and process.poll() is None:
            assert time.monotonic() < deadline, f"no /healthz answer:\n{log.read_text()}"
            time.sleep(0.1)
        output = log.read_text(errors="replace")
        assert status == 200, f"/healthz -> {status}, exit {process.returncode}:\n{output}"
        assert run_healthcheck(runtime, port) == 0

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=SHUTDOWN_TIMEOUT + 15)
        assert returncode == 0, f"exit {returncode} after SIGTERM:\n{log.read_text()}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
