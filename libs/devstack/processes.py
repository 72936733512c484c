"""Child processes with named output, readiness waits and clean stops."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the supervisor dies, so no orphan outlives a
    killed test run or ``make run``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


# Ports handed to the stack's listeners come from below the kernel's ephemeral range: a port the kernel
# picked (bind to 0) is in that range, and any outgoing connection made before the listener binds (the stack
# makes many while it starts) may take it. Each process draws from its own slice, so parallel runs rarely meet.
_LISTEN_PORTS = range(10_000, 32_000)
_drawn: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now, outside the ephemeral range, not handed out before by this
    process."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randrange(_LISTEN_PORTS.start, _LISTEN_PORTS.stop)
        if port in _drawn:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _drawn.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for_port(port: int, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Block until something listens on ``127.0.0.1:port``; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def wait_for_http(url: str, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Block until ``url`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


class ProcessDied(RuntimeError):
    """A managed process exited while it was expected to run."""


class ManagedProcess:
    """A child process whose every output line is prefixed with its name, to a terminal or a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        ready_marker: str | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.ready_marker = ready_marker
        self._ready = threading.Event()
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The OS process id."""
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> ManagedProcess:
        """Spawn it in its own session (a terminal's Ctrl-C reaches only the supervisor, which stops it)."""
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=self.user,
            group=self.user,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        sink: IO[str] = open(self.log_path, "a", buffering=1) if self.log_path else sys.stdout  # noqa: SIM115
        self._pump = threading.Thread(target=self._copy_output, args=(sink,), daemon=True)
        self._pump.start()
        return self

    def _copy_output(self, sink: IO[str]) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        prefix = f"{self.name:<15}| "
        marker = self.ready_marker
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace")
            sink.write(prefix + line)
            if marker is not None and marker in line:
                self._ready.set()
        self._proc.stdout.close()
        if sink is not sys.stdout:
            sink.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the process printed its ready marker."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s}s\n{self.tail()}")

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._proc is not None and self._proc.poll() is None

    def wait_exited(self, timeout_s: float) -> bool:
        """Block until the process exited (``False`` if it still runs after ``timeout_s``)."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def check_alive(self) -> None:
        """Raise ``ProcessDied`` (with the log's tail) if it exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ProcessDied(f"{self.name} exited with {self._proc.returncode}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The last lines of its log file, when it logs to one."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` (SIGKILL to simulate a crash, SIGSTOP to freeze it)."""
        if self.alive():
            assert self._proc is not None
            os.kill(self._proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        if self._pump is not None:
            self._pump.join(timeout=2)
        return self._proc.returncode
