"""Fixtures that start real infrastructure: nats-server and PostgreSQL 15 processes (never mocks)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from libs.devstack.infra import PostgresCluster, start_nats
from libs.devstack.processes import ManagedProcess, free_port
from libs.platform.natsauth import AuthStore, service_creds


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


@dataclass
class NatsTestServer:
    """A real nats-server in operator mode, and the authority that mints its credentials."""

    url: str
    auth: AuthStore
    creds_dir: Path
    process: ManagedProcess

    def creds(self, name: str, module: str = "test") -> Path:
        """Credentials of client ``name`` as the stack gives them to ``services.<module>``."""
        return service_creds(self.auth, self.creds_dir, name, module)

    def env(self, name: str, module: str) -> dict[str, str]:
        """``CS_NATS_*`` for a service process ``name`` running ``services.<module>``."""
        return {"CS_NATS_URL": self.url, "CS_NATS_CREDS": str(self.creds(name, module)),
                "CS_NATS_AUTH_DIR": str(self.auth.directory)}  # fmt: skip

    async def connect(self, name: str = "test", **options: Any) -> Client:
        """A nats-py client with the platform's (unconfined) credentials of ``name``."""
        return await nats.connect(self.url, user_credentials=str(self.creds(name)), **options)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsTestServer]:
    """A nats-server with JetStream and authorization of this test's own: subjects and streams never leak
    between tests, and no anonymous client is accepted."""
    port = free_port()
    auth = AuthStore(tmp_path / "nats-auth").init()
    process = start_nats(port, tmp_path / "jetstream", auth, tmp_path / "nats.log")
    yield NatsTestServer(f"nats://127.0.0.1:{port}", auth, tmp_path / "creds", process)
    process.stop()
