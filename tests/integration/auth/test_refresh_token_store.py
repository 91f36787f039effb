"""The rotated refresh token on disk: a fresh temp file per write, renamed, directory synced."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from bridge.auth import RefreshToken
from tests.integration.auth.conftest import MakeCredential
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration


def rotating_source(server: TokenServer, store: Path) -> RefreshToken:
    server.rotate_refresh_tokens = True
    return RefreshToken(server.token_url, server.client_id, server.refresh_token, store=store)


async def test_a_planted_tmp_symlink_does_not_receive_the_secret(
    token_server: TokenServer, make_credential: MakeCredential, tmp_path: Path
) -> None:
    """A fixed ``<store>.tmp`` name is followed if someone put a symlink there: the refresh
    token would be written to wherever it points."""
    store = tmp_path / "state" / "refresh.json"
    store.parent.mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    (store.parent / "refresh.json.tmp").symlink_to(elsewhere)

    source = rotating_source(token_server, store)
    await make_credential(source).get()

    assert elsewhere.read_text() == "untouched"
    saved = json.loads(store.read_text())
    assert saved["refresh_token"] == source.refresh_token.get_secret_value()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


async def test_no_temp_files_left_and_concurrent_writers_never_collide(
    token_server: TokenServer, tmp_path: Path
) -> None:
    """Two credentials for the same store (two bridges, a restart overlapping the old process)
    write at the same moment: every write succeeds and the file is always whole."""
    store = tmp_path / "state" / "refresh.json"
    source = rotating_source(token_server, store)
    tokens = [f"rotated-{i}" * 50 for i in range(40)]
    # Two threads at a time, as two processes' to_thread calls would run.
    for first, second in zip(tokens[::2], tokens[1::2], strict=True):
        await asyncio.gather(
            asyncio.to_thread(source._save, first), asyncio.to_thread(source._save, second)
        )
        assert json.loads(store.read_text())["refresh_token"] in (first, second)
    assert sorted(p.name for p in store.parent.iterdir()) == ["refresh.json"]


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records what each os.fsync call synced (by /proc path), then syncs it for real."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


async def test_the_directory_is_synced_after_the_rename(
    token_server: TokenServer,
    make_credential: MakeCredential,
    tmp_path: Path,
    fsynced: list[str],
) -> None:
    store = tmp_path / "state" / "refresh.json"
    await make_credential(rotating_source(token_server, store)).get()
    # The file's data, then the directory entry that makes the rename durable.
    assert fsynced[-1] == str(store.parent)
    assert any(p.endswith(".tmp") for p in fsynced[:-1])
