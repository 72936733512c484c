"""Fixtures that start real infrastructure: nats-server and PostgreSQL 15 processes (never mocks)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.devstack.infra import PostgresCluster, start_nats
from libs.devstack.processes import free_port


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL 15 cluster for the session; each test gets its own database from ``database_url``."""
    workdir = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    workdir.chmod(0o755)
    cluster = PostgresCluster(workdir / "data", free_port(), workdir / "postgres.log", durable=False)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def database_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for this test."""
    return postgres_cluster.create_database(f"test_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server with JetStream of this test's own: subjects and streams never leak between tests."""
    port = free_port()
    process = start_nats(port, tmp_path / "jetstream", tmp_path / "nats.log")
    yield f"nats://127.0.0.1:{port}"
    process.stop()
