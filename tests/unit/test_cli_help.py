"""The image has no README: ``--help`` of every command must stand on its own."""

from __future__ import annotations

import pytest

from bridge import __version__
from bridge.cli import main


def help_of(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cometd-bridge {__version__}"


def test_top_level_help_documents_the_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    assert "README" not in text
    for needle in (
        "BRIDGE_ENDPOINTS",
        "BRIDGE_ENDPOINTS__<NAME>__<FIELD>",
        "BRIDGE_CONFIG_FILE",
        "BRIDGE_AMQP_URL",
        "BRIDGE_AMQP_CA_FILE",
        "_FILE",
        "exit codes",
        "examples:",
        "check-config --connect",
    ):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["run"], []),
        (["check-config"], ["--connect", "--timeout"]),
        (["demo"], ["--rate", "--count", "--http-port"]),
        (["positions"], ["--state-dir"]),
        (["positions", "show"], ["--json"]),
        (["positions", "set"], []),
        (["positions", "clear"], []),
    ],
)
def test_every_command_lists_its_options_with_an_example(
    capsys: pytest.CaptureFixture[str], command: list[str], options: list[str]
) -> None:
    text = help_of(capsys, *command)
    for option in options:
        assert option in text, option
    assert "example" in text, text
    assert f"cometd-bridge {' '.join(command)}" in text.split("example", 1)[1], text
