"""A GPU owner joins the network: registered with the CLI, the agent dials out with its credentials file,
serves paid traffic from the official SDK, earns, and once revoked is cut off and refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import openai
import pytest
from nats.aio.client import Client as NATS

from libs.devstack.processes import free_port
from libs.devstack.stack import REPO_ROOT, AgentSpec, SimulatorSpec, Stack, demo_agent_config, throwaway_config

pytestmark = pytest.mark.e2e

MODEL = "agent-model"


@pytest.fixture
def agent_stack() -> Iterator[Stack]:
    simulator = SimulatorSpec("gpu-box", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "12"})
    config = throwaway_config(
        simulators=[simulator],
        agents=[AgentSpec("gpu-owner", simulator.base_url, demo_agent_config(MODEL), region="eu")],
        service_env={"CS_ROUTER_HOSTER_TTL_S": "2", "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"},
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``computeshare`` as a person types it (``--json`` after the subcommand)."""
    return subprocess.run(
        [sys.executable, "-m", "services.billing.cli", *args],
        env=stack.service_env(), cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_a_registered_agent_serves_earns_and_is_cut_off_when_revoked(agent_stack: Stack) -> None:
    agent = agent_stack.config.agents[0]
    _, key = agent_stack.create_account(credits="10")
    client = openai.OpenAI(api_key=key, base_url=agent_stack.config.api_base, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        extra_body={"allow_hosters": [agent.hoster_id]},
    )
    completion = raw.parse()
    assert raw.headers["x-computeshare-hoster"] == agent.hoster_id
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0

    # The hoster's earnings show once billing settled the request.
    deadline = time.monotonic() + 15
    while True:
        earnings = json.loads(cli(agent_stack, "hoster", "earnings", agent.hoster_id, "--json").stdout)
        if earnings and earnings[0]["earned"] > 0:
            break
        assert time.monotonic() < deadline, f"no earnings for {agent.hoster_id}: {earnings}"
        time.sleep(0.2)

    # OpenRouter's provider.only picks it by its registered name, in any case, once the router has the
    # registration from billing (it asks every few seconds).
    while True:
        named = httpx.post(
            f"{agent_stack.config.api_base}/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hello"}],
                "provider": {"only": ["GPU-Owner"]},
            },
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        if named.status_code != 503:
            break
        assert time.monotonic() < deadline + 15, "the router never matched the registered name"
        time.sleep(0.2)
    assert named.status_code == 200, named.text
    assert named.headers["x-computeshare-hoster"] == agent.hoster_id

    listing = json.loads(cli(agent_stack, "--json", "hoster", "list").stdout)
    [mine] = [h for h in listing if h["id"] == agent.hoster_id]
    assert mine["live"] is True
    assert mine["models"] == [MODEL]
    assert mine["region"] == "eu"
    assert mine["earned"] > 0
    assert not mine["revoked"]

    revoked_at = time.monotonic()
    result = cli(agent_stack, "hoster", "revoke", agent.hoster_id, "--json")
    assert result.returncode == 0, result.stderr
    # Cut off within 10 s: the network stops routing to it.
    while True:
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"allow_hosters": [agent.hoster_id]},
            )
        if refused.value.status_code == 503:
            break
        assert time.monotonic() - revoked_at < 10
    assert time.monotonic() - revoked_at < 10
    listing = json.loads(cli(agent_stack, "hoster", "list", "--json").stdout)
    [mine] = [h for h in listing if h["id"] == agent.hoster_id]
    assert mine["revoked"] is True
    assert mine["live"] is False


async def test_a_revoked_hosters_next_connection_is_refused(agent_stack: Stack) -> None:
    agent = agent_stack.config.agents[0]
    creds = Path(agent_stack.creds_dir / f"{agent.name}.creds")
    assert cli(agent_stack, "hoster", "revoke", agent.hoster_id).returncode == 0
    nc = NATS()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(
                agent_stack.nats_url, user_credentials=str(creds), allow_reconnect=False, connect_timeout=2
            )
    finally:
        await nc.close()


def test_register_writes_credentials_once(agent_stack: Stack, tmp_path: Path) -> None:
    creds = tmp_path / "box.creds"
    first = cli(agent_stack, "hoster", "register", "--name", "box", "--creds", str(creds), "--json")
    assert first.returncode == 0, first.stderr
    registered = json.loads(first.stdout)
    assert creds.stat().st_mode & 0o077 == 0
    text = creds.read_text()
    assert "BEGIN NATS USER JWT" in text
    assert "BEGIN USER NKEY SEED" in text
    again = cli(agent_stack, "hoster", "register", "--name", "box", "--creds", str(creds))
    assert again.returncode != 0
    assert "written once" in again.stderr
    assert creds.read_text() == text
    assert registered["id"] in {h["id"] for h in json.loads(cli(agent_stack, "hoster", "list", "--json").stdout)}
    # The agent's name is taken, whatever the case: no credentials for a second hoster under it.
    taken = cli(agent_stack, "hoster", "register", "--name", "GPU-OWNER", "--creds", str(tmp_path / "x.creds"))
    assert taken.returncode == 2
    assert "a live hoster is registered as 'GPU-OWNER'" in taken.stderr
    assert not (tmp_path / "x.creds").exists()
