"""Settings: every kind of mistake names the variable and never echoes the value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.settings import (
    BearerAuth,
    ConfigError,
    OAuth2ClientCredentialsAuth,
    SalesforceJwtAuth,
    Settings,
    load_settings,
    redacted_dump,
    unknown_variables,
)


URL = "https://cometd.example.com/cometd"
SECRET = "s3cr3t-VALUE-never-printed"


def endpoints(**orders: Any) -> dict[str, str]:
    """BRIDGE_ENDPOINTS as JSON with one endpoint ``orders``."""
    ep: dict[str, Any] = {"url": URL, "channels": ["/event/Order__e"]}
    ep.update(orders)
    return {"BRIDGE_ENDPOINTS": json.dumps({"orders": ep})}


def load(env: dict[str, str]) -> Settings:
    return load_settings(env, secrets_dir=None)


def problems(env: dict[str, str]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(env)
    text = repr(info.value.problems) + str(info.value)
    assert SECRET not in text
    return info.value.problems


def only_problem(env: dict[str, str]) -> tuple[str, str]:
    found = problems(env)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- good configs


def test_defaults_follow_the_contract() -> None:
    s = load(endpoints())
    assert s.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert (s.http_host, s.http_port, s.log_level, s.log_format) == (
        "0.0.0.0",
        8080,
        "INFO",
        "auto",
    )
    assert s.state_dir == Path("./state")
    assert (s.shutdown_timeout, s.publish_timeout) == (20.0, 10.0)
    assert (s.position_flush_interval, s.position_flush_every) == (1.0, 1000)
    assert s.control_exchange == "cometd.control"
    ep = s.endpoints["orders"]
    assert ep.connection_types == ["websocket", "long-polling"]
    assert ep.connection_timeout == 30.0
    assert (ep.max_pending_count, ep.max_pending_bytes, ep.max_inflight) == (1000, 16 << 20, 512)
    assert (ep.exchange, ep.exchange_type, ep.routing_key) == ("cometd", "topic", "{channel}")
    assert ep.alternate_exchange is None
    assert (ep.replay, ep.replay_fallback, ep.gap_policy, ep.ack) == (
        "off",
        "new",
        "earliest",
        "auto",
    )
    assert ep.auth.kind == "none"
    assert ep.api_version == "62.0"


def test_nested_variables_merge_into_the_json() -> None:
    env = endpoints(max_pending_count=5)
    env["BRIDGE_ENDPOINTS__ORDERS__MAX_PENDING_COUNT"] = "7"
    env["BRIDGE_ENDPOINTS__ORDERS__AUTH__KIND"] = "bearer"
    env["BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN"] = SECRET
    env["BRIDGE_ENDPOINTS__OTHER__URL"] = "http://127.0.0.1:1/cometd"
    env["BRIDGE_ENDPOINTS__OTHER__CHANNELS"] = '["/a/b", "/c/**"]'
    s = load(env)
    assert set(s.endpoints) == {"orders", "other"}
    orders = s.endpoints["orders"]
    assert orders.max_pending_count == 7
    assert orders.channels == ["/event/Order__e"]
    assert isinstance(orders.auth, BearerAuth)
    assert orders.auth.token is not None
    assert orders.auth.token.get_secret_value() == SECRET
    assert s.endpoints["other"].channels == ["/a/b", "/c/**"]


def test_lists_accept_a_single_value_or_commas() -> None:
    env = {
        "BRIDGE_ENDPOINTS__ORDERS__URL": URL,
        "BRIDGE_ENDPOINTS__ORDERS__CHANNELS": "/a, /b/*",
        "BRIDGE_ENDPOINTS__ORDERS__CONNECTION_TYPES": "long_polling",
    }
    ep = load(env).endpoints["orders"]
    assert ep.channels == ["/a", "/b/*"]
    assert ep.connection_types == ["long-polling"]


def test_null_from_the_environment() -> None:
    env = endpoints(alternate_exchange="ae") | {
        "BRIDGE_ENDPOINTS__ORDERS__CONNECTION_TIMEOUT": "null",
        "BRIDGE_ENDPOINTS__ORDERS__ALTERNATE_EXCHANGE": "null",
    }
    ep = load(env).endpoints["orders"]
    assert (ep.connection_timeout, ep.alternate_exchange) == (None, None)


@pytest.mark.parametrize(
    ("given", "expected"), [("-1", "new"), ("-2", "all"), (-2, "all"), ("stored", "stored")]
)
def test_replay_aliases(given: Any, expected: str) -> None:
    assert load(endpoints(replay=given)).endpoints["orders"].replay == expected


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_salesforce_jwt_derives_the_url(tmp_path: Path, rsa_pem: str) -> None:
    key = tmp_path / "key.pem"
    key.write_text(rsa_pem)
    auth = {
        "kind": "salesforce_jwt",
        "client_id": "c",
        "username": "u@x",
        "private_key_file": str(key),
    }
    env = {"BRIDGE_ENDPOINTS": json.dumps({"sf": {"channels": ["/event/A"], "auth": auth}})}
    ep = load(env).endpoints["sf"]
    assert isinstance(ep.auth, SalesforceJwtAuth)
    assert ep.auth.private_key is not None
    assert ep.auth.private_key.get_secret_value().endswith("-----END PRIVATE KEY-----")
    assert ep.resolve_url("https://na1.my.salesforce.com/") == (
        "https://na1.my.salesforce.com/cometd/62.0"
    )


def test_secret_files(tmp_path: Path) -> None:
    amqp = tmp_path / "amqp"
    amqp.write_text("amqp://bridge:pw@rabbit:5672/vh\n")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    auth = {
        "kind": "oauth2_client_credentials",
        "token_url": "https://auth.example.com/token",
        "client_id": "cid",
        "client_secret_file": str(secret),
    }
    env = endpoints(auth=auth) | {"BRIDGE_AMQP_URL_FILE": str(amqp)}
    s = load(env)
    assert s.amqp_url.get_secret_value() == "amqp://bridge:pw@rabbit:5672/vh"
    a = s.endpoints["orders"].auth
    assert isinstance(a, OAuth2ClientCredentialsAuth)
    assert a.client_secret is not None
    assert a.client_secret.get_secret_value() == SECRET


def test_secrets_dir(tmp_path: Path) -> None:
    (tmp_path / "bridge_amqp_url").write_text("amqps://u:p@rabbit/")
    s = load_settings(endpoints(), secrets_dir=tmp_path)
    assert s.amqp_url.get_secret_value() == "amqps://u:p@rabbit/"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in endpoints().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BRIDGE_HTTP_PORT", "9464")
    assert load_settings(secrets_dir=None).http_port == 9464


# --------------------------------------------------------------------------- mistakes


def test_missing_endpoints() -> None:
    assert only_problem({})[0] == "BRIDGE_ENDPOINTS"
    assert only_problem({"BRIDGE_ENDPOINTS": "{}"}) == (
        "BRIDGE_ENDPOINTS",
        "at least one endpoint is required",
    )


def test_bad_json_names_the_variable_not_the_value() -> None:
    var, reason = only_problem({"BRIDGE_ENDPOINTS": '{"orders": {"url": "' + SECRET})
    assert var == "BRIDGE_ENDPOINTS"
    assert "invalid JSON" in reason


def test_bad_json_in_a_nested_variable() -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__CHANNELS": '["/a", ' + SECRET}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__CHANNELS"
    assert "invalid JSON" in reason


def test_endpoints_not_an_object() -> None:
    var, reason = only_problem({"BRIDGE_ENDPOINTS": "orders"})
    assert var == "BRIDGE_ENDPOINTS"
    assert "JSON object" in reason


def test_missing_url() -> None:
    env = {"BRIDGE_ENDPOINTS": json.dumps({"orders": {"channels": ["/a"]}})}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__URL"
    assert "url is required" in reason
    assert "orders.url in BRIDGE_ENDPOINTS" in reason
    nested = {"BRIDGE_ENDPOINTS__ORDERS__CHANNELS": "/a"}
    assert only_problem(nested)[0] == "BRIDGE_ENDPOINTS__ORDERS__URL"


@pytest.mark.parametrize("url", ["ftp://host/cometd", "cometd.example.com", "http://"])
def test_bad_url(url: str) -> None:
    var, reason = only_problem(endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__URL": url})
    assert var == "BRIDGE_ENDPOINTS__ORDERS__URL"
    assert "http" in reason


def test_bad_amqp_url_does_not_echo_it() -> None:
    var, reason = only_problem(endpoints() | {"BRIDGE_AMQP_URL": f"http://u:{SECRET}@h/"})
    assert var == "BRIDGE_AMQP_URL"
    assert "amqp://" in reason


def test_unknown_connection_type() -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__CONNECTION_TYPES": '["websocket", "smoke"]'}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__CONNECTION_TYPES"
    assert reason.startswith("item 1:")
    assert "long-polling" in reason


@pytest.mark.parametrize(
    "field",
    ["MAX_PENDING_COUNT", "MAX_PENDING_BYTES", "MAX_INFLIGHT", "CONNECTION_TIMEOUT"],
)
@pytest.mark.parametrize("value", ["-1", "0"])
def test_limits_must_be_positive(field: str, value: str) -> None:
    var, reason = only_problem(endpoints() | {f"BRIDGE_ENDPOINTS__ORDERS__{field}": value})
    assert var == f"BRIDGE_ENDPOINTS__ORDERS__{field}"
    assert "greater than 0" in reason


def test_negative_limit_inside_json_names_both_forms() -> None:
    var, reason = only_problem(endpoints(max_pending_count=-5))
    assert var == "BRIDGE_ENDPOINTS"
    assert reason.startswith("orders.max_pending_count:")
    assert "BRIDGE_ENDPOINTS__ORDERS__MAX_PENDING_COUNT" in reason


@pytest.mark.parametrize("var", ["BRIDGE_SHUTDOWN_TIMEOUT", "BRIDGE_POSITION_FLUSH_EVERY"])
def test_top_level_numbers_positive(var: str) -> None:
    assert only_problem(endpoints() | {var: "-3"})[0] == var


@pytest.mark.parametrize(
    "channel",
    ["event/A", "/event//A", "/meta/**", "/meta/connect", "/a/*/b", "/a/***", "/a b", "/"],
)
def test_bad_channel(channel: str) -> None:
    var, reason = only_problem(endpoints(channels=["/ok", channel]))
    assert var == "BRIDGE_ENDPOINTS"
    assert reason.startswith("orders.channels: item 1:")


@pytest.mark.parametrize("channel", ["/event/Order__e", "/a/*", "/a/**", "/**", "/u/x-y_z!~()$@"])
def test_good_channels(channel: str) -> None:
    assert load(endpoints(channels=[channel])).endpoints["orders"].channels == [channel]


def test_no_channels() -> None:
    assert "orders.channels" in only_problem(endpoints(channels=[]))[1]


@pytest.mark.parametrize(
    ("template", "needle"),
    [("{exchange}.{channel}", "{exchange}"), ("{channel", "unbalanced"), ("{channel!r}", "format")],
)
def test_bad_routing_key_template(template: str, needle: str) -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__ROUTING_KEY": template}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__ROUTING_KEY"
    assert needle in reason


def test_good_routing_key_template() -> None:
    env = endpoints(routing_key="cometd.{endpoint}.{channel}.{{literal}}")
    assert load(env).endpoints["orders"].routing_key == "cometd.{endpoint}.{channel}.{{literal}}"


def test_upper_case_endpoint_name_in_json() -> None:
    env = {"BRIDGE_ENDPOINTS": json.dumps({"Orders": {"url": URL, "channels": ["/a"]}})}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS"
    assert "lower" in reason


def test_unknown_endpoint_field() -> None:
    var, reason = only_problem(endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__MAX_PENDING": "5"})
    assert var == "BRIDGE_ENDPOINTS__ORDERS__MAX_PENDING"
    assert reason.startswith("unknown setting")


def test_unknown_auth_kind() -> None:
    var, reason = only_problem(endpoints(auth={"kind": "kerberos"}))
    assert var == "BRIDGE_ENDPOINTS"
    assert "salesforce_jwt" in reason


def test_missing_secret() -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__AUTH__KIND": "bearer"}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN"
    assert reason.startswith("token (or token_file) is required")
    alone = {"BRIDGE_ENDPOINTS__ORDERS__URL": URL, "BRIDGE_ENDPOINTS__ORDERS__CHANNELS": "/a"}
    alone["BRIDGE_ENDPOINTS__ORDERS__AUTH__KIND"] = "bearer"
    assert only_problem(alone) == (
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN",
        "token (or token_file) is required",
    )


def test_secret_and_secret_file_conflict(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(SECRET)
    env = endpoints() | {
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__KIND": "bearer",
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN": SECRET,
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN_FILE": str(tmp_path / "t"),
    }
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN"
    assert "not both" in reason


def test_secret_file_missing(tmp_path: Path) -> None:
    env = endpoints() | {
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__KIND": "bearer",
        "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN_FILE": str(tmp_path / "absent"),
    }
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__AUTH__TOKEN_FILE"
    assert "cannot read secret file" in reason
    var, _ = only_problem(endpoints() | {"BRIDGE_AMQP_URL_FILE": str(tmp_path / "absent")})
    assert var == "BRIDGE_AMQP_URL_FILE"


def test_salesforce_jwt_needs_exactly_one_key(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("pem")
    base = {"kind": "salesforce_jwt", "client_id": "c", "username": "u"}
    var, _ = only_problem(endpoints(auth=base))
    assert var == "BRIDGE_ENDPOINTS__ORDERS__AUTH__PRIVATE_KEY"
    both = base | {"private_key": SECRET, "private_key_file": str(tmp_path / "k")}
    assert "not both" in only_problem(endpoints(auth=both))[1]


def test_several_problems_are_all_reported() -> None:
    env = endpoints() | {
        "BRIDGE_ENDPOINTS__ORDERS__MAX_INFLIGHT": "0",
        "BRIDGE_ENDPOINTS__ORDERS__EXCHANGE_TYPE": "x-delayed",
        "BRIDGE_HTTP_PORT": "70000",
        "BRIDGE_LOG_FORMAT": "xml",
    }
    assert {var for var, _ in problems(env)} == {
        "BRIDGE_ENDPOINTS__ORDERS__MAX_INFLIGHT",
        "BRIDGE_ENDPOINTS__ORDERS__EXCHANGE_TYPE",
        "BRIDGE_HTTP_PORT",
        "BRIDGE_LOG_FORMAT",
    }


def test_render_is_one_line_per_problem() -> None:
    env = endpoints() | {"BRIDGE_HTTP_PORT": "x", "BRIDGE_LOG_FORMAT": "xml"}
    with pytest.raises(ConfigError) as info:
        load(env)
    lines = info.value.render().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["BRIDGE_HTTP_PORT", "BRIDGE_LOG_FORMAT"]


@pytest.mark.parametrize(("given", "expected"), [("debug", "DEBUG"), ("warn", "WARNING")])
def test_log_level_is_case_insensitive(given: str, expected: str) -> None:
    assert load(endpoints() | {"BRIDGE_LOG_LEVEL": given}).log_level == expected


def test_unknown_variables_are_listed_for_a_warning() -> None:
    env = endpoints() | {"BRIDGE_HTTP_PROT": "1", "BRIDGE_AMQP_URL_FILE": "/x", "PATH": "/bin"}
    assert unknown_variables(env) == ["BRIDGE_HTTP_PROT"]


# --------------------------------------------------------------------------- redaction


def test_redacted_dump_hides_every_secret() -> None:
    env = endpoints(
        auth={
            "kind": "oauth2_refresh_token",
            "token_url": f"https://user:{SECRET}@auth.example.com/token",
            "client_id": "cid",
            "client_secret": SECRET,
            "refresh_token": SECRET,
        },
        headers={"Authorization": f"Basic {SECRET}", "X-Trace": "on"},
    ) | {"BRIDGE_AMQP_URL": f"amqp://bridge:{SECRET}@rabbit:5672/"}
    dump = redacted_dump(load(env))
    text = json.dumps(dump)
    assert SECRET not in text
    assert dump["amqp_url"] == "amqp://bridge:***@rabbit:5672/"
    auth = dump["endpoints"]["orders"]["auth"]
    assert auth["client_secret"] == "***"
    assert auth["refresh_token"] == "***"
    assert auth["token_url"] == "https://user:***@auth.example.com/token"
    # Every configured header value is hidden, whatever the header is called.
    assert dump["endpoints"]["orders"]["headers"] == {"Authorization": "***", "X-Trace": "***"}
    assert dump["state_dir"] == "state"


def test_redacted_dump_hides_query_secrets_header_values_and_at_passwords() -> None:
    env = endpoints(
        url=f"{URL}?access_token={SECRET}&api=62",
        auth={
            "kind": "oauth2_client_credentials",
            "token_url": f"https://auth.example.com/token?clientSecret={SECRET}",
            "client_id": "cid",
            "client_secret": SECRET,
        },
        headers={"X-Custom": SECRET, "X-Signed": f"sig={SECRET}"},
    ) | {"BRIDGE_AMQP_URL": f"amqp://bridge:p@ss-{SECRET}@rabbit:5672/"}
    dump = redacted_dump(load(env))
    text = json.dumps(dump)
    assert SECRET not in text
    assert "ss-" not in text
    assert dump["amqp_url"] == "amqp://bridge:***@rabbit:5672/"
    orders = dump["endpoints"]["orders"]
    assert orders["url"] == f"{URL}?access_token=***&api=62"
    assert orders["headers"] == {"X-Custom": "***", "X-Signed": "***"}


# --------------------------------------------------------------------------- refused combos


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Trace", f"{SECRET}\r\nX-Injected: 1"),
        ("X-Trace", f"{SECRET}\n"),
        ("X-Trace", f"a\x00{SECRET}"),
    ],
)
def test_header_value_with_control_characters_is_refused(name: str, value: str) -> None:
    var, reason = only_problem(endpoints(headers={name: value}))
    assert var == "BRIDGE_ENDPOINTS"
    assert "headers" in reason
    assert "X-Trace" in reason
    assert "CR, LF" in reason


@pytest.mark.parametrize("name", ["X Trace", "X-Trace:", "X-Trace\r\n", "", "Ünicode"])
def test_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    var, reason = only_problem(endpoints(headers={name: "v"}))
    assert var == "BRIDGE_ENDPOINTS"
    assert "not an HTTP token" in reason


def test_header_problem_names_the_nested_variable() -> None:
    env = endpoints() | {"BRIDGE_ENDPOINTS__ORDERS__HEADERS": json.dumps({"X-A": "a\rb"})}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__HEADERS"
    assert "X-A" in reason


def test_tab_and_visible_characters_in_header_values_are_fine() -> None:
    headers = {"X-Trace": "a\tb ;=,\"'~", "X_Under.score!": "1"}
    assert load(endpoints(headers=headers)).endpoints["orders"].headers == headers


@pytest.mark.parametrize("replay", ["new", "all", "stored", "-1", "-2"])
@pytest.mark.parametrize("channel", ["/event/*", "/**", "/data/**"])
def test_replay_with_a_wildcard_channel_is_refused(replay: str, channel: str) -> None:
    var, reason = only_problem(endpoints(replay=replay, channels=["/event/A__e", channel]))
    assert var == "BRIDGE_ENDPOINTS"
    assert channel in reason
    assert "wildcard" in reason
    assert "replay" in reason


def test_replay_wildcard_names_the_replay_variable() -> None:
    env = endpoints(channels=["/event/*"]) | {"BRIDGE_ENDPOINTS__ORDERS__REPLAY": "stored"}
    var, reason = only_problem(env)
    assert var == "BRIDGE_ENDPOINTS__ORDERS__REPLAY"
    assert "/event/*" in reason


def test_wildcards_without_replay_are_fine() -> None:
    ep = load(endpoints(channels=["/event/*", "/**"])).endpoints["orders"]
    assert ep.channels == ["/event/*", "/**"]


def sf_endpoint(**auth: Any) -> dict[str, str]:
    base = {"kind": "salesforce_jwt", "client_id": "c", "username": "u@x"}
    return {"BRIDGE_ENDPOINTS": json.dumps({"sf": {"channels": ["/event/A"], "auth": base | auth}})}


@pytest.mark.parametrize(
    "pem",
    [
        f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n",
        SECRET,
        "",
    ],
)
def test_salesforce_key_that_does_not_parse_is_a_config_error(pem: str, tmp_path: Path) -> None:
    var, reason = only_problem(sf_endpoint(private_key=pem or " "))
    assert var == "BRIDGE_ENDPOINTS"
    assert "private_key" in reason
    assert "not an unencrypted PEM private key" in reason

    key = tmp_path / "key.pem"
    key.write_text(pem)
    var, reason = only_problem(sf_endpoint(private_key_file=str(key)))
    assert "private_key" in reason


def test_salesforce_key_that_is_not_rsa_is_a_config_error() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    _, reason = only_problem(sf_endpoint(private_key=pem))
    assert "RSA" in reason


def test_cryptography_is_imported_only_for_salesforce_jwt(rsa_pem: str) -> None:
    """Loading settings without a salesforce_jwt endpoint must not pull in cryptography."""
    code = (
        "import json, sys\n"
        "from bridge.settings import load_settings\n"
        "env = {'BRIDGE_ENDPOINTS': json.dumps({'o': {'url': 'https://h/c', 'channels': ['/a'],"
        " 'auth': {'kind': 'oauth2_client_credentials', 'token_url': 'https://h/t',"
        " 'client_id': 'c', 'client_secret': 's'}}})}\n"
        "load_settings(env, secrets_dir=None)\n"
        "print('cryptography' in sys.modules)\n"
        "env['BRIDGE_ENDPOINTS'] = json.dumps({'s': {'channels': ['/a'], 'auth': {"
        "'kind': 'salesforce_jwt', 'client_id': 'c', 'username': 'u',"
        " 'private_key': sys.argv[1]}}})\n"
        "load_settings(env, secrets_dir=None)\n"
        "print('cryptography' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, rsa_pem], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True"]


def test_token_request_settings() -> None:
    auth = {
        "kind": "oauth2_client_credentials",
        "token_url": "https://auth.example.com/token",
        "client_id": "cid",
        "client_secret": SECRET,
    }
    ep = load(endpoints(auth=auth)).endpoints["orders"]
    assert isinstance(ep.auth, OAuth2ClientCredentialsAuth)
    assert ep.auth.min_token_interval == 30.0
    assert ep.auth.default_lifetime == 3600.0
    tuned = auth | {"min_token_interval": 0.5, "default_lifetime": 60}
    ep = load(endpoints(auth=tuned)).endpoints["orders"]
    assert isinstance(ep.auth, OAuth2ClientCredentialsAuth)
    assert (ep.auth.min_token_interval, ep.auth.default_lifetime) == (0.5, 60.0)
    for bad in ({"min_token_interval": -1}, {"default_lifetime": 0}, {"default_lifetime": "inf"}):
        var, _ = only_problem(endpoints(auth=auth | bad))
        assert var == "BRIDGE_ENDPOINTS"
