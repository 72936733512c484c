"""Real nats-server and PostgreSQL 15 processes in local data directories."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from libs.devstack.processes import ManagedProcess, wait_for_port

PG_BIN = Path(os.environ.get("CS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def nats_server_binary() -> str:
    """Path of ``nats-server`` (the Debian package installs it in /usr/sbin)."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/bin")
    if found is None:
        raise FileNotFoundError("nats-server is not installed (make installs it with apt)")
    return found


def start_nats(
    port: int,
    store_dir: Path,
    log_path: Path | None = None,
    name: str = "nats",
    cluster: tuple[int, list[int]] | None = None,
    server_name: str | None = None,
    monitor_port: int | None = None,
) -> ManagedProcess:
    """Start nats-server with JetStream on loopback; ``cluster`` is (own route port, peers' route ports),
    ``monitor_port`` serves the HTTP monitoring endpoints (``/jsz``, ``/healthz``)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    if server_name:
        argv += ["-n", server_name]
    if monitor_port is not None:
        argv += ["-m", str(monitor_port)]
    if cluster is not None:
        own, peers = cluster
        argv += ["--cluster_name", "cs", "--cluster", f"nats://127.0.0.1:{own}"]
        argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in peers)]
    process = ManagedProcess(name, argv, log_path=log_path).start()
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
