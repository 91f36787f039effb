"""The compose stack's bridge and demo services, as docker-compose.yml configures them, work.

No Docker engine here, so the two services run as local processes: the demo source with the
compose file's entrypoint + command, the bridge with the image's entry command and the
compose file's environment (service host names mapped to 127.0.0.1, free ports, and a
unique exchange so the shared test broker stays clean). Messages must arrive in a queue,
``/readyz`` must turn ready and ``/metrics`` must count what flowed: the working picture
``docker compose up`` promises. The example Kubernetes configuration is checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from tests.deploy.test_entrypoint import entry_command, free_port, parse_dockerfile
from tests.deploy.test_kubernetes import duration_seconds


yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) is needed to read compose files")

ROOT = Path(__file__).resolve().parents[2]
INIT = ["tini", "--"]
START_BOUND = 30.0  # seconds; reaching a bound is a failure
MESSAGES = 5


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def local_command(argv: list[str]) -> list[str]:
    """A container command as a local one: no init wrapper, this interpreter as ``python``."""
    if argv[: len(INIT)] == INIT:
        argv = argv[len(INIT) :]
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Process:
    """A child process with its output in a file, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, condition: Any, what: str) -> None:
        # Polls: these processes announce readiness only through the HTTP/TCP state checked.
        deadline = time.monotonic() + START_BOUND
        while not condition():
            assert self.popen.poll() is None, f"{self.name} exited: {what}\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name}: {what}\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=30)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.kill()


def bridge_env(service: dict[str, Any], hosts: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: str(v) for k, v in service["environment"].items()}
    for key, value in env.items():
        for container_host, local in hosts.items():
            value = value.replace(container_host, local)
        env[key] = value
    return {**os.environ, **env, **extra}


def bridge_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bridge replicas: every service that configures endpoints."""
    return {n: s for n, s in services.items() if "BRIDGE_ENDPOINTS" in s.get("environment", {})}


def test_compose_runs_replicas_of_one_configuration() -> None:
    services = compose()["services"]
    replicas = bridge_services(services)
    assert len(replicas) >= 2, f"one bridge service only: {sorted(replicas)}"
    envs = {name: dict(service["environment"]) for name, service in replicas.items()}
    ids = [env.pop("BRIDGE_REPLICA_ID", None) for env in envs.values()]
    assert None not in ids, f"every replica sets BRIDGE_REPLICA_ID: {ids}"
    assert len(set(ids)) == len(ids), f"replica ids repeat: {ids}"
    # Same configuration otherwise: the replicas compete for the same endpoints' leases.
    first, *others = envs.values()
    assert all(env == first for env in others), envs
    assert first["BRIDGE_COORDINATION"] == "rabbitmq"
    host_ports = [p.split(":")[0] for service in replicas.values() for p in service["ports"]]
    assert len(set(host_ports)) == len(host_ports), host_ports
    for name, service in replicas.items():
        # rabbitmq mode keeps positions in RabbitMQ: no state volume to share or lose.
        assert not service.get("volumes"), f"{name} mounts {service['volumes']}"
        drain = float(service["environment"]["BRIDGE_SHUTDOWN_TIMEOUT"])
        assert duration_seconds(service["stop_grace_period"]) > drain, name
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
    # Prometheus scrapes every replica, so the alerts see the standbys as well as the owner.
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text("utf-8"))
    scrape = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = scrape["cometd-bridge"]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:8080" for name in replicas)


async def test_compose_bridge_replicas_and_demo_deliver_messages(
    amqp_url: str, tmp_path: Path, processes: list[Process]
) -> None:
    services = compose()["services"]
    demo_service, replicas = services["demo"], bridge_services(services)
    demo_port = free_port()
    exchange = f"deploy-test-{os.getpid()}-{demo_port}"
    # The compose endpoint under a name of this run: leases and positions in RabbitMQ are per
    # endpoint name, and the test broker is shared with other runs.
    endpoint = exchange

    demo_argv = local_command(demo_service["entrypoint"] + demo_service["command"])
    assert demo_argv[demo_argv.index("--port") + 1] == "8090"
    demo_argv[demo_argv.index("--port") + 1] = str(demo_port)
    demo = Process("demo", demo_argv, dict(os.environ), tmp_path)
    processes.append(demo)
    # The compose healthcheck, pointed at the local port.
    check = local_command(demo_service["healthcheck"]["test"][1:])
    check = [arg.replace("8090", str(demo_port)) for arg in check]
    demo.wait_until(
        lambda: subprocess.run(check, capture_output=True, timeout=10).returncode == 0,
        "the compose healthcheck of the demo never passed",
    )

    runtime = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))[-1]
    bridges: dict[str, tuple[Process, str]] = {}
    for name, service in replicas.items():
        (compose_endpoint,) = json.loads(service["environment"]["BRIDGE_ENDPOINTS"]).values()
        http_port = free_port()
        env = bridge_env(
            service,
            {
                "amqp://guest:guest@rabbitmq:5672/": amqp_url,
                "demo:8090": f"127.0.0.1:{demo_port}",
            },
            BRIDGE_HTTP_HOST="127.0.0.1",
            BRIDGE_HTTP_PORT=str(http_port),
            # Used by a bridge in file mode only (one lock per directory).
            BRIDGE_STATE_DIR=str(tmp_path / f"state-{name}"),
        )
        compose_endpoint["exchange"] = exchange
        compose_endpoint["url"] = compose_endpoint["url"].replace(
            "demo:8090", f"127.0.0.1:{demo_port}"
        )
        env["BRIDGE_ENDPOINTS"] = json.dumps({endpoint: compose_endpoint})
        bridge = Process(name, entry_command(runtime), env, tmp_path)
        processes.append(bridge)
        bridges[name] = (bridge, f"http://127.0.0.1:{http_port}")
    # A standby is ready too (connected, able to take over), so every replica turns ready.
    for bridge, base in bridges.values():
        ready = f"{base}/readyz"
        bridge.wait_until(lambda url=ready: http_status(url) == 200, "/readyz never turned 200")

    connection = await aio_pika.connect_robust(
        amqp_url, client_properties={"connection_name": exchange}
    )
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        received: list[aio_pika.abc.AbstractIncomingMessage] = []
        try:
            async with asyncio.timeout(START_BOUND), queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    received.append(message)
                    if len(received) == MESSAGES:
                        break
        except TimeoutError:
            logs = "\n".join(b.output() for b, _ in bridges.values())
            pytest.fail(f"{len(received)}/{MESSAGES} messages arrived:\n{logs}")
        await channel.exchange_delete(exchange)

    keys = {m.routing_key for m in received}
    assert keys <= {"event.Order__e", "data.AccountChangeEvent"}, keys
    for message in received:
        assert message.headers["cometd-endpoint"] == endpoint
        assert message.content_type == "application/json"
        json.loads(message.body)

    # A standby has no per-endpoint flow series yet: absent counts as 0.
    published = up = 0.0
    owners: list[str] = []
    async with aiohttp.ClientSession() as session:
        for name, (_, base) in bridges.items():
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
            samples = dict(
                line.rsplit(" ", 1)
                for line in metrics.splitlines()
                if line and not line.startswith("#")
            )
            assert float(samples["cometd_bridge_amqp_connected"]) == 1, name
            assert "# TYPE cometd_bridge_endpoint_active gauge" in metrics, name
            label = f'{{endpoint="{endpoint}"}}'
            published += float(samples.get(f"cometd_bridge_messages_published_total{label}", 0))
            up += float(samples.get(f"cometd_bridge_endpoint_up{label}", 0))
            if float(samples.get(f"cometd_bridge_endpoint_active{label}", 0)) == 1:
                owners.append(name)
    assert up >= 1, "no replica streams the endpoint"
    assert len(owners) <= 1, f"several replicas hold the endpoint's lease: {owners}"
    assert published >= MESSAGES

    for bridge, _ in bridges.values():
        assert bridge.stop() == 0, bridge.output()
    assert demo.stop() == 0, demo.output()


def test_kubernetes_example_configuration_is_accepted() -> None:
    """The ConfigMap plus the example Secret is a valid bridge configuration, and the secret
    values are merged into the endpoint (and hidden in check-config's output)."""
    kube = ROOT / "deploy" / "kubernetes"
    data = yaml.safe_load((kube / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    secret = yaml.safe_load((kube / "secret.example.yaml").read_text(encoding="utf-8"))
    env = {"PATH": os.environ.get("PATH", ""), **data, **secret["stringData"]}
    program = str(Path(sys.executable).parent / "cometd-bridge")
    result = subprocess.run(
        [program, "check-config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "unknown environment variable" not in result.stderr, result.stderr
    effective = json.loads(result.stdout)
    assert effective["state_dir"] == "/var/lib/cometd-bridge"
    assert effective["endpoints"]["orders"]["auth"]["client_secret"] == "***"
    assert "change-me" not in result.stdout
