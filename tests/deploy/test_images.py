"""deploy/<service>.Dockerfile: no Docker engine runs here, so the tests read the Dockerfiles: hadolint
lints them, and each keeps its shape (pinned base, a builder stage, a final stage without build tools that
runs the service as a fixed non-root uid)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "python:3.11.7-slim-bookworm"
# Service -> the port it serves and the path Docker's healthcheck asks.
SERVICES = {
    "ingress": (8080, "/readyz"),
    "router": (9090, "/readyz"),
    "billing": (9090, "/readyz"),
    "hoster_adapter": (9090, "/readyz"),
    "simulator": (9100, "/healthz"),
    "console": (8090, "/readyz"),
}


class Instruction(NamedTuple):
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def instructions(path: Path) -> list[Instruction]:
    """The instructions of ``path`` in order (comments dropped, ``\\`` continuations joined)."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
            pending = ""
    return found


def stages(path: Path) -> list[list[Instruction]]:
    """The build stages of ``path``: each starts at a FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def dockerfile(service: str) -> Path:
    """The Dockerfile of ``service``."""
    return ROOT / "deploy" / f"{service}.Dockerfile"


def test_one_dockerfile_per_service() -> None:
    """Exactly the six services have a Dockerfile (the old shared one is gone)."""
    assert sorted(path.name for path in (ROOT / "deploy").glob("*Dockerfile")) == sorted(
        f"{service}.Dockerfile" for service in SERVICES
    )


def test_hadolint_finds_nothing() -> None:
    """hadolint (Dockerfile best practices and ShellCheck on every RUN) has no warning for any of them."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("hadolint")), *(str(dockerfile(service)) for service in SERVICES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_builder_stage_installs_the_project(service: str) -> None:
    """The builder makes a virtualenv from the project's own pyproject; the final stage only copies it."""
    builder, *_, final = stages(dockerfile(service))
    assert builder[0] == Instruction("FROM", f"{BASE_IMAGE} AS builder")
    copies = [i.arguments for i in builder if i.keyword == "COPY"]
    assert "pyproject.toml README.md ./" in copies
    runs = " ".join(i.arguments for i in builder if i.keyword == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert "/opt/venv/bin/pip install --no-deps ." in runs
    assert final[0] == Instruction("FROM", BASE_IMAGE)
    assert Instruction("COPY", "--from=builder /opt/venv /opt/venv") in final


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_the_service_unprivileged(service: str) -> None:
    """No build tools, a fixed non-root uid, unbuffered logs, the right port, SIGTERM, a healthcheck and the
    service's own entry point."""
    port, path = SERVICES[service]
    final = stages(dockerfile(service))[-1]
    keywords = [i.keyword for i in final]
    runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert not re.search(r"apt-get|pip|gcc|build-essential", runs), runs

    (user,) = [i.arguments for i in final if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0
    assert f"--uid {uid}" in runs
    assert keywords.index("USER") < keywords.index("CMD")

    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert [i.arguments for i in final if i.keyword == "EXPOSE"] == [str(port)]
    assert [i.arguments for i in final if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]

    (healthcheck,) = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}{path}" in healthcheck

    (cmd,) = [i.arguments for i in final if i.keyword == "CMD"]
    assert json.loads(cmd) == ["python", "-m", f"services.{service}"]
    assert (ROOT / "services" / service / "__main__.py").is_file()


def test_console_assets_come_from_the_lock_file() -> None:
    """The console's Chart.js is installed with `npm ci` from its package-lock.json in a stage of its own, and
    only the file the console serves reaches the final image, where the console is told where it is."""
    _, assets, final = stages(dockerfile("console"))
    assert assets[0].keyword == "FROM"
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim AS assets", assets[0].arguments)
    assert Instruction("COPY", "services/console/package.json services/console/package-lock.json ./") in assets
    assert any(i.keyword == "RUN" and i.arguments.startswith("npm ci ") for i in assets)
    [copied] = [i.arguments for i in final if i.keyword == "COPY" and "--from=assets" in i.arguments]
    assert copied.split()[1].endswith("/node_modules/chart.js/dist/chart.umd.min.js")
    vendor = copied.split()[2].removesuffix("chart.js/dist/")
    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert f"CS_CONSOLE_VENDOR_DIR={vendor.rstrip('/')}" in env


def test_build_context_leaves_out_local_state() -> None:
    """The build context carries no virtualenv, git history, tests, node_modules, local data or caches."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "tests", "node_modules", ".computeshare", ".mypy_cache", "**/__pycache__"} <= ignored
