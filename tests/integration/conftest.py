"""Integration fixtures: services as real processes against the real nats-server and PostgreSQL fixtures."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from libs.devstack.processes import ManagedProcess, wait_for_port
from libs.devstack.stack import REPO_ROOT

Spawn = Callable[..., ManagedProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``python -m services.<module>`` with ``env``; every process is stopped after the test."""
    started: list[ManagedProcess] = []

    def _spawn(
        name: str, module: str, env: dict[str, str], marker: str | None = None, port: int | None = None
    ) -> ManagedProcess:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CS_LOG_FORMAT": "json", **env}
        process = ManagedProcess(
            name,
            [sys.executable, "-m", f"services.{module}"],
            env=full_env,
            log_path=tmp_path / f"{name}.log",
            cwd=REPO_ROOT,
            ready_marker=marker,
        ).start()
        started.append(process)
        if marker is not None:
            process.wait_ready(30)
        if port is not None:
            wait_for_port(port, 20, process)
        return process

    yield _spawn
    for process in reversed(started):
        process.stop()
