"""End-to-end fixtures: the whole stack as processes, called through its public HTTP API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libs.devstack.processes import free_port
from libs.devstack.stack import AdapterSpec, SimulatorSpec, Stack, demo_hoster, throwaway_config


def build_stack(
    ingresses: int = 1, embedding_model: str | None = None, routers: int = 1, reply_tokens: int = 12, **service_env: str
) -> Stack:
    """One simulator serving ``demo-model`` (answers of ``reply_tokens``), one adapter, ``routers`` routers, one
    billing, ``ingresses`` ingresses; the demo hoster serves ``embedding_model`` for embeddings too if given."""
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": str(reply_tokens)})
    config = throwaway_config(
        ingress_ports=[free_port() for _ in range(ingresses)],
        routers=routers,
        simulators=[simulator],
        adapters=[
            AdapterSpec(
                "hoster_adapter",
                [demo_hoster(simulator.base_url, embedding_model=embedding_model)],
                {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"},
            )
        ],
        service_env={
            "CS_ROUTER_HOSTER_TTL_S": "2",
            "CS_INGRESS_IDLE_TIMEOUT_S": "10",
            "CS_ADAPTER_KEEPALIVE_INTERVAL_S": "2",
            # Leases go back soon after a test's requests (``test_money.settled`` waits for them).
            "CS_ROUTER_LEASE_IDLE_S": "0.3",
            **service_env,
        },
    )
    return Stack(config).start()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A stack shared by the tests of a module (tests that break it use ``fresh_stack``)."""
    running = build_stack()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    """A key of an account with plenty of credits on the module's stack."""
    return stack.create_account(credits="1000")[1]


@pytest.fixture
def fresh_key(fresh_stack: Stack) -> str:
    """A key of an account with plenty of credits on the test's own stack."""
    return fresh_stack.create_account(credits="1000")[1]


@pytest.fixture
def fresh_stack() -> Iterator[Stack]:
    """A stack of this test's own, free to kill."""
    running = build_stack()
    yield running
    running.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SDK clients made in end-to-end tests hold sockets the garbage collector closes later, in whatever test
    runs then; a ResourceWarning there says nothing about the code under test (services run as processes)."""
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
