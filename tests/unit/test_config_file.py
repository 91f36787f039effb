"""BRIDGE_CONFIG_FILE (YAML below the environment) and the settings messages an operator reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.settings import ConfigError, Settings, load_settings, value_sources


URL = "https://cometd.example.com/cometd"
SECRET = "s3cr3t-VALUE-never-printed"

CONFIG = f"""
log_level: debug
amqp_url_file: {{amqp_file}}
endpoints:
  orders:
    url: {URL}
    channels: [/event/Order__e, /event/Other__e]
    exchange: from-file
    auth:
      kind: bearer
      token_file: {{token_file}}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    amqp = tmp_path / "amqp_url"
    amqp.write_text(f"amqp://bridge:{SECRET}@rabbit:5672/\n", encoding="utf-8")
    token = tmp_path / "token"
    token.write_text(SECRET, encoding="utf-8")
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(amqp_file=amqp, token_file=token), encoding="utf-8")
    return path


def load(env: dict[str, str]) -> Settings:
    return load_settings(env, secrets_dir=None)


def problems(env: dict[str, str]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(env)
    assert SECRET not in str(info.value)
    return info.value.problems


# --------------------------------------------------------------------------- config file


def test_the_file_configures_everything_the_environment_can(config_file: Path) -> None:
    s = load({"BRIDGE_CONFIG_FILE": str(config_file)})
    orders = s.endpoints["orders"]
    assert s.log_level == "DEBUG"
    assert orders.exchange == "from-file"
    assert orders.channels == ["/event/Order__e", "/event/Other__e"]
    # Secrets still come from files named in the configuration file.
    assert s.amqp_url.get_secret_value() == f"amqp://bridge:{SECRET}@rabbit:5672/"
    assert orders.auth.token.get_secret_value() == SECRET  # type: ignore[union-attr]


def test_environment_overrides_the_file_field_by_field(config_file: Path) -> None:
    s = load(
        {
            "BRIDGE_CONFIG_FILE": str(config_file),
            "BRIDGE_LOG_LEVEL": "warning",
            "BRIDGE_ENDPOINTS__ORDERS__EXCHANGE": "from-env",
        }
    )
    orders = s.endpoints["orders"]
    assert s.log_level == "WARNING"
    assert orders.exchange == "from-env"
    # The rest of the endpoint still comes from the file.
    assert orders.url == URL
    assert orders.auth.kind == "bearer"


def test_value_sources_say_env_file_or_default(config_file: Path) -> None:
    env = {
        "BRIDGE_CONFIG_FILE": str(config_file),
        "BRIDGE_ENDPOINTS__ORDERS__EXCHANGE": "from-env",
    }
    sources = value_sources(env, secrets_dir=None)
    assert sources["endpoints.orders.exchange"] == "env (BRIDGE_ENDPOINTS__ORDERS__EXCHANGE)"
    assert sources["endpoints.orders.url"] == f"file ({config_file})"
    assert sources["amqp_url"] == f"file ({config_file})"
    assert sources["endpoints.orders.auth.token"] == f"file ({config_file})"
    assert sources["endpoints.orders.routing_key"] == "default"
    assert sources["http_port"] == "default"


def test_check_config_prints_the_sources(config_file: Path) -> None:
    env = {"BRIDGE_CONFIG_FILE": str(config_file), "BRIDGE_HTTP_PORT": "9000", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["endpoints"]["orders"]["exchange"] == "from-file"
    assert "http_port: env (BRIDGE_HTTP_PORT)" in done.stderr
    assert f"endpoints.orders.exchange: file ({config_file})" in done.stderr
    assert "shutdown_timeout: default" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    [(var, reason)] = problems({"BRIDGE_CONFIG_FILE": str(tmp_path / "nope.yaml")})
    assert var == "BRIDGE_CONFIG_FILE"
    assert "no such file" in reason


def test_invalid_yaml_names_the_position_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"endpoints:\n  orders: [{SECRET}\n", encoding="utf-8")
    [(var, reason)] = problems({"BRIDGE_CONFIG_FILE": str(path)})
    assert var == "BRIDGE_CONFIG_FILE"
    assert "invalid YAML" in reason
    assert "line" in reason


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    [(var, reason)] = problems({"BRIDGE_CONFIG_FILE": str(path)})
    assert var == "BRIDGE_CONFIG_FILE"
    assert "mapping" in reason


def test_a_mistake_in_the_file_names_the_file_and_path(config_file: Path) -> None:
    text = config_file.read_text(encoding="utf-8").replace("exchange:", "exchnage:")
    config_file.write_text(text, encoding="utf-8")
    [(var, reason)] = problems({"BRIDGE_CONFIG_FILE": str(config_file)})
    assert var == "BRIDGE_CONFIG_FILE"
    assert reason == (
        f"{config_file}: endpoints.orders.exchnage: unknown setting; did you mean `exchange`?"
    )


# --------------------------------------------------------------------------- messages


def endpoint_json(name: str = "orders", **fields: Any) -> dict[str, str]:
    ep: dict[str, Any] = {"url": URL, "channels": ["/event/Order__e"], **fields}
    return {"BRIDGE_ENDPOINTS": json.dumps({name: ep})}


def test_an_invalid_endpoint_name_is_named() -> None:
    found = problems(endpoint_json("Bad"))
    assert ("BRIDGE_ENDPOINTS", found[0][1]) == found[0]
    assert "'Bad'" in found[0][1]


def test_no_variable_is_suggested_that_configures_another_endpoint() -> None:
    # BRIDGE_ENDPOINTS__BAD__CHANNELS would configure "bad", not "Bad".
    env = {"BRIDGE_ENDPOINTS": json.dumps({"Bad": {"url": URL}})}
    text = "\n".join(f"{v}: {r}" for v, r in problems(env))
    assert "BRIDGE_ENDPOINTS__BAD" not in text
    assert "BRIDGE_ENDPOINTS: Bad.channels: Field required" in text


def test_a_misspelt_key_gets_the_nearest_field_not_the_typo() -> None:
    [(var, reason)] = problems(endpoint_json(exchnage="x"))
    assert var == "BRIDGE_ENDPOINTS"
    assert reason == "orders.exchnage: unknown setting; did you mean `exchange`?"
    assert "EXCHNAGE" not in reason


def test_a_misspelt_variable_gets_the_nearest_field() -> None:
    env = endpoint_json() | {"BRIDGE_ENDPOINTS__ORDERS__EXCHNAGE": "x"}
    [(var, reason)] = problems(env)
    assert (var, reason) == (
        "BRIDGE_ENDPOINTS__ORDERS__EXCHNAGE",
        "unknown setting; did you mean `exchange`?",
    )


def test_a_misspelt_auth_key_gets_the_auth_kinds_field() -> None:
    [(_, reason)] = problems(endpoint_json(auth={"kind": "bearer", "tokn": SECRET}))
    assert "did you mean `token`?" in reason


def test_template_messages_have_single_braces() -> None:
    [(_, reason)] = problems(endpoint_json(routing_key="{nope}"))
    assert "known: {endpoint}, {channel}, {channel_path}" in reason
    assert "{{" not in reason


# --------------------------------------------------------------------------- check-config


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config"],
        env={"PATH": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_warns_on_replay_off_for_salesforce() -> None:
    sf = "https://example.my.salesforce.com/cometd/62.0"
    done = check_config(endpoint_json(url=sf))
    assert done.returncode == 0, done.stderr
    assert "warning: endpoint orders: replay is off on a Salesforce endpoint" in done.stderr
    quiet = check_config(endpoint_json(url=sf, replay="stored"))
    assert "replay is off" not in quiet.stderr
    other = check_config(endpoint_json())
    assert "replay is off" not in other.stderr


def test_check_config_refuses_what_run_refuses_when_building_auth() -> None:
    # An ext_path with an empty segment passes the field checks but the auth extension that
    # run builds at start refuses it (run exits 2): check-config must too.
    auth = {"kind": "bearer", "token": SECRET, "placement": "ext", "ext_path": "auth..token"}
    done = check_config(endpoint_json(auth=auth))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "orders.auth: ext_path must be a dotted path" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_a_misspelt_top_level_variable_gets_a_suggestion() -> None:
    done = check_config(endpoint_json() | {"BRIDGE_LOG_LEVL": "debug"})
    assert done.returncode == 0, done.stderr
    assert "warning: BRIDGE_LOG_LEVL matches no setting (did you mean BRIDGE_LOG_LEVEL?)" in (
        done.stderr
    )


def test_a_value_from_the_secrets_directory_is_not_called_a_default(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bridge_amqp_url").write_text(f"amqp://u:{SECRET}@rabbit:5672/", encoding="utf-8")
    sources = value_sources(endpoint_json(), secrets_dir=secrets)
    assert sources["amqp_url"] == f"secret ({secrets / 'bridge_amqp_url'})"
    assert sources["http_port"] == "default"
