"""`computeshare nats init`, as compose and Kubernetes deployments run it, against the real pinned nats-server:
no anonymous client, each service's own credentials work, JetStream works, a hoster minted later with the same
authority is accepted, and running it again changes no key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from libs.devstack.infra import nats_server_binary
from libs.devstack.processes import ManagedProcess, free_port, wait_for_port
from libs.devstack.stack import REPO_ROOT
from libs.platform.natsauth import AuthStore
from services.billing.cli import DEPLOYED_SERVICES

pytestmark = pytest.mark.integration


def nats_init(directory: Path, resolver: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "services.billing.cli", "--json", "nats", "init", "--dir", str(directory),
         "--resolver-dir", str(resolver)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    written: dict[str, object] = json.loads(result.stdout)
    return written


async def test_nats_init_gives_a_server_that_refuses_anonymous_clients_and_takes_each_service(tmp_path: Path) -> None:
    auth_dir, data = tmp_path / "auth", tmp_path / "data"
    nats_init(auth_dir, data / "accounts")
    creds_before = {p.name: p.read_text() for p in (auth_dir / "creds").iterdir()}
    assert set(creds_before) == {f"{name}.creds" for name in DEPLOYED_SERVICES}
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in (auth_dir / "creds").iterdir())
    nats_init(auth_dir, data / "accounts")  # again: nothing changes
    assert {p.name: p.read_text() for p in (auth_dir / "creds").iterdir()} == creds_before

    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{data}" }}\ninclude "auth/auth.conf"\n')
    server = ManagedProcess("nats", [nats_server_binary(), "-c", str(config)], log_path=tmp_path / "nats.log").start()
    try:
        wait_for_port(port, 15, server)
        url = f"nats://127.0.0.1:{port}"
        anonymous = NATS()
        try:
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await anonymous.connect(url, allow_reconnect=False, connect_timeout=2)
        finally:
            await anonymous.close()
        for name in DEPLOYED_SERVICES:
            nc = await nats.connect(url, user_credentials=str(auth_dir / "creds" / f"{name}.creds"))
            await nc.flush()
            await nc.close()
        platform = await nats.connect(url, user_credentials=str(auth_dir / "creds" / "billing.creds"))
        try:
            js = platform.jetstream()
            await js.add_stream(name="PROBE", subjects=["probe.>"])
            assert (await js.publish("probe.one", b"x")).seq == 1
        finally:
            await platform.close()
        # A hoster registered later (billing's `hoster register` mints with the same authority) gets in.
        authority = AuthStore(auth_dir / "authority")
        _, creds = authority.mint_hoster("11111111-2222-4333-8444-555555555555", "later")
        path = authority.write_creds(tmp_path / "later.creds", creds)
        hoster = await nats.connect(url, user_credentials=str(path))
        await hoster.flush()
        await hoster.close()
    finally:
        server.stop()
        await asyncio.sleep(0)
