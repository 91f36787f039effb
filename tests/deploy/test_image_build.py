"""The image's build stage, run here without Docker: context, wheel, virtualenv.

The build context is assembled as Docker would (``.dockerignore``, then the build stage's
COPY lines) and the stage's RUN line is executed with its absolute paths moved into a
temporary directory. The resulting virtualenv (what the runtime stage copies) must hold
every module of the package, the console script the ENTRYPOINT names, and no pip.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.test_entrypoint import Stage, exec_form, parse_dockerfile


ROOT = Path(__file__).resolve().parents[2]


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, ``!`` re-includes, and a
    pattern matching a parent directory matches everything below it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            result = not negated
    return result


def build_stage() -> Stage:
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    return stages[0]


def test_dockerignore_keeps_secrets_and_caches_out_but_sources_in() -> None:
    patterns = ignore_patterns()
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".venv-deploy/bin/python",
        ".env",
        "tests/conftest.py",
        "state/positions.json",
        ".cache/promtool/x",
        "bridge/__pycache__/cli.cpython-311.pyc",
        "tests/servers/node_modules/x.js",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "bridge/cli.py", "bridge/py.typed"):
        assert not ignored(path, patterns), f"{path} is needed by the build"


def assemble_context(stage: Stage, workdir: Path) -> None:
    """Copy what the stage's COPY lines name (as filtered by .dockerignore) into workdir."""
    patterns = ignore_patterns()
    copies = [args.split() for kw, args in stage.instructions if kw == "COPY"]
    assert copies, "the build stage copies nothing"
    for *sources, dest in copies:
        assert not any(s.startswith("--") for s in sources), "no COPY --from in the build stage"
        target = workdir / dest
        for source in sources:
            src = ROOT / source
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if ignored(rel, patterns):
                    continue
                out = (target / file.name) if src.is_file() else target / file.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)


def local_run_line(stage: Stage, tmp: Path) -> str:
    """The build stage's RUN line with absolute container paths under ``tmp`` and the
    image's ``pip``/``python`` as this interpreter."""
    runs = [args for kw, args in stage.instructions if kw == "RUN"]
    assert len(runs) == 1, "one RUN builds the wheel and the virtualenv"
    tokens = []
    for token in runs[0].split():
        for container_path in ("/wheels", "/opt/venv"):
            if token.startswith(container_path):
                token = str(tmp / container_path.lstrip("/")) + token[len(container_path) :]
        tokens.append(
            {"pip": f"{sys.executable} -m pip", "python": sys.executable}.get(token, token)
        )
    return " ".join(tokens)


@pytest.mark.slow
def test_build_stage_produces_a_complete_virtualenv(tmp_path: Path) -> None:
    stage = build_stage()
    workdir = tmp_path / "src"
    workdir.mkdir()
    assemble_context(stage, workdir)
    line = local_run_line(stage, tmp_path)
    # Network: the wheel build fetches setuptools and the install fetches the dependencies,
    # as `docker build` does.
    result = subprocess.run(
        ["bash", "-c", f"set -e; {line}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    venv = tmp_path / "opt" / "venv"
    assert not (venv / "bin" / "pip").exists(), "pip would ship in the runtime image"
    runtime = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))[-1]
    program = exec_form(runtime.last("ENTRYPOINT"))[-1]
    version = subprocess.run(
        [str(venv / "bin" / program), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("cometd-bridge ")

    (site,) = (venv / "lib").glob("python3.*/site-packages")
    shipped = {
        p.relative_to(site).as_posix()
        for p in (site / "bridge").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    expected = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "bridge").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected - shipped == set(), f"missing from the image: {sorted(expected - shipped)}"
