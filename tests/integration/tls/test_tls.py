"""TLS with a private CA: an endpoint's ``ca_file`` lets the CometD client (both transports)
trust a server certificate signed by it; without it the connection fails on verification.
BRIDGE_AMQP_*_FILE: the context handed to aio-pika is built from the files, and a missing or
unparsable file is a configuration error (the shared test broker has no TLS listener)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.cometd.events import ClientEvent
from bridge.cometd.exceptions import CometdError
from bridge.demo.bayeux_server import BayeuxServer
from bridge.pipeline.source import CometdSource
from bridge.settings import ConfigError, Endpoint, load_settings
from bridge.tls import client_context
from tests.integration.tls.pki import new_ca


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca = new_ca("bridge test CA", root)
    server = ca.issue("127.0.0.1", root, server=True)
    return {"ca": ca.file, "cert": server.cert, "key": server.key}


@pytest.fixture
async def tls_server(pki: dict[str, Path]) -> AsyncIterator[BayeuxServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    server = BayeuxServer()
    await server.start("127.0.0.1", 0, ssl_context=context)
    try:
        yield server
    finally:
        await server.stop()


def _endpoint(url: str, connection_type: str, ca_file: Path | None) -> Endpoint:
    fields: dict[str, object] = {
        "url": url,
        "channels": ["/tls/test"],
        "connection_types": [connection_type],
        "connection_timeout": 10,
    }
    if ca_file is not None:
        fields["ca_file"] = str(ca_file)
    return Endpoint.model_validate(fields)


def _source(config: Endpoint, events: list[ClientEvent]) -> CometdSource:
    return CometdSource(
        config,
        replay_start=None,
        position=lambda channel: None,
        ack=False,
        extensions=(),
        auth=None,
        listener=events.append,
    )


@pytest.mark.parametrize("connection_type", ["websocket", "long-polling"])
async def test_the_bridge_source_trusts_the_endpoints_ca_file(
    tls_server: BayeuxServer, pki: dict[str, Path], connection_type: str
) -> None:
    assert tls_server.url.startswith("https://")
    events: list[ClientEvent] = []
    source = _source(_endpoint(tls_server.url, connection_type, pki["ca"]), events)
    await source.open(tls_server.url)
    try:
        await source.subscribe("/tls/test")
        tls_server.publish("/tls/test", {"n": 1})
        batch = await source.receive_many(10)
        assert [m.get("data") for m in batch] == [{"n": 1}]
    finally:
        await source.close()
        source.release()


@pytest.mark.parametrize("connection_type", ["websocket", "long-polling"])
async def test_without_the_ca_file_the_server_certificate_is_refused(
    tls_server: BayeuxServer, connection_type: str
) -> None:
    events: list[ClientEvent] = []
    source = _source(_endpoint(tls_server.url, connection_type, None), events)
    with pytest.raises(CometdError) as info:
        await source.open(tls_server.url)
    await source.close()
    source.release()
    chain: list[str] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    assert "CERTIFICATE_VERIFY_FAILED" in " | ".join(chain), chain


async def test_check_config_connect_uses_the_ca_file(
    tls_server: BayeuxServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    """The operator's view: check-config --connect handshakes over TLS with ca_file and says
    why it fails without it."""

    async def check(ca_file: Path | None) -> tuple[int, str]:
        endpoint: dict[str, object] = {"url": tls_server.url, "channels": ["/tls/test"]}
        if ca_file is not None:
            endpoint["ca_file"] = str(ca_file)
        env = {
            "BRIDGE_ENDPOINTS": json.dumps({"secure": endpoint}),
            "BRIDGE_STATE_DIR": str(tmp_path / "state"),
            "BRIDGE_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",  # its FAIL line is not ours
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "bridge", "check-config", "--connect", "--timeout", "10"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode() + err.decode()

    _, good = await check(pki["ca"])
    assert "ok   endpoint secure handshake" in good, good
    code, bad = await check(None)
    line = next(x for x in bad.splitlines() if "endpoint secure handshake" in x)
    assert line.startswith("FAIL"), line
    assert "certificate verify failed" in line.lower(), line
    assert code == 1


# --------------------------------------------------------------------------- AMQP TLS files


def test_amqp_tls_files_build_the_context_given_to_aio_pika(pki: dict[str, Path]) -> None:
    env = {
        "BRIDGE_ENDPOINTS": json.dumps({"o": {"url": "https://x.example/c", "channels": ["/a"]}}),
        "BRIDGE_AMQP_URL": "amqps://u:p@rabbit.example:5671/",
        "BRIDGE_AMQP_CA_FILE": str(pki["ca"]),
        "BRIDGE_AMQP_CERT_FILE": str(pki["cert"]),
        "BRIDGE_AMQP_KEY_FILE": str(pki["key"]),
    }
    s = load_settings(env, secrets_dir=None)
    context = client_context(s.amqp_ca_file, s.amqp_cert_file, s.amqp_key_file)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "bridge test CA"} in subjects


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("BRIDGE_AMQP_CA_FILE", "no such file"),
        ("BRIDGE_AMQP_CERT_FILE", "no such file"),
    ],
)
def test_a_missing_amqp_tls_file_is_a_configuration_error(
    tmp_path: Path, pki: dict[str, Path], variable: str, expected: str
) -> None:
    env = {
        "BRIDGE_ENDPOINTS": json.dumps({"o": {"url": "https://x.example/c", "channels": ["/a"]}}),
        variable: str(tmp_path / "absent.pem"),
    }
    if variable == "BRIDGE_AMQP_CERT_FILE":
        env["BRIDGE_AMQP_KEY_FILE"] = str(pki["key"])
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert variable in done.stderr
    assert expected in done.stderr


def test_a_ca_file_that_is_not_pem_is_a_configuration_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    env = {
        "BRIDGE_ENDPOINTS": json.dumps(
            {"o": {"url": "https://x.example/c", "channels": ["/a"], "ca_file": str(junk)}}
        ),
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env, secrets_dir=None)
    [(variable, reason)] = info.value.problems
    assert variable == "BRIDGE_ENDPOINTS"
    assert reason.startswith("o.ca_file: ")
    assert "not a PEM certificate" in reason
