"""The production topology on one machine: a 3-node NATS cluster and replicas of every service, under steady
traffic while one replica of each service and one NATS node are killed in turn. Every request ends cleanly,
every answered request is charged at most once (exactly once, but for the few a killed router was running:
those are released uncharged), and the network heals."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from libs.contracts import subjects
from libs.contracts.pricing import MICRO, cost_of
from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, SimulatorSpec, Stack, nats_cluster, throwaway_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WORKERS = 8
PHASE_S = 6.0
REQUEST_TIMEOUT_S = 40.0
CREDITS = 1000
HOSTERS = [f"cccccccc-0000-4000-8000-00000000000{i}" for i in range(3)]
# About 0.9 s a request: the first token after 100 ms, then 24 tokens at 30 a second.
SIMULATOR = {"CS_SIMULATOR_TTFT_MS": "100", "CS_SIMULATOR_TOKENS_PER_SECOND": "30", "CS_SIMULATOR_REPLY_TOKENS": "24"}
BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Tell me about replicas."}], "max_tokens": 64}
# One replica of each service, in the order they are killed; then the NATS node leading the usage stream.
VICTIMS = ["ingress-0", "router-0", "billing-0", "adapter-0"]
CLEAN_ERROR_STATUSES = {500, 502, 503}


def hoster(index: int, simulator: SimulatorSpec) -> dict[str, Any]:
    """The ``index``-th of three equal hosters of ``demo-model``, all served by the same simulator."""
    return {
        "id": HOSTERS[index],
        "name": f"hoster-{index}",
        "base_url": simulator.base_url,
        "cloud": False,
        "capacity": 64,
        "models": [{"name": DEMO_MODEL, "input_price": "0.50", "output_price": "1.50", "context_length": 8192}],
    }


@pytest.fixture
def topology() -> Iterator[Stack]:
    """3 NATS nodes, 2 ingresses, 2 routers, 2 billings and 3 adapters (one hoster each) on R3 streams."""
    simulator = SimulatorSpec("simulator", free_port(), SIMULATOR)
    heartbeat = {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5", "CS_ADAPTER_KEEPALIVE_INTERVAL_S": "2"}
    config = throwaway_config(
        nats_nodes=nats_cluster(3),
        ingress_ports=[free_port(), free_port()],
        routers=2,
        billings=2,
        simulators=[simulator],
        adapters=[AdapterSpec(f"adapter-{i}", [hoster(i, simulator)], heartbeat) for i in range(3)],
        service_env={
            "CS_NATS_STREAM_REPLICAS": "3",
            "CS_ROUTER_HOSTER_TTL_S": "3",
            "CS_INGRESS_IDLE_TIMEOUT_S": "10",
            "CS_BILLING_RESERVATION_TTL_S": "20",
            "CS_BILLING_SWEEP_INTERVAL_S": "2",
            # A killed router's credit leases come back within seconds, not the default half minute.
            "CS_BILLING_LEASE_TTL_S": "5",
            "CS_ROUTER_LEASE_KEEPALIVE_S": "1",
        },
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


@dataclass
class Outcome:
    """One request as its client saw it."""

    ingress: str
    phase: str
    started: float
    ended: float = 0.0
    status: int | None = None
    client_error: str | None = None
    timed_out: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def request_id(self) -> str | None:
        """The gateway's id of the request, when an answer came back."""
        return self.headers.get("x-request-id")

    @property
    def kind(self) -> str:
        """What happened, in a word or three: ``200``, ``503 hoster_unavailable``, ``client error``, ``hang``."""
        if self.timed_out:
            return "hang"
        if self.status is None:
            return "client error"
        if self.status == 200:
            return "200"
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return f"{self.status} {error.get('code') if isinstance(error, dict) else '?'}"


class Traffic:
    """Clients sending non-streaming requests back to back, each alternating between the ingresses in rotation
    (as a load balancer would, a killed ingress leaves the rotation when it dies)."""

    def __init__(self, ports: dict[str, int], key: str) -> None:
        self.ports = ports
        self.rotation = list(ports)
        self.phase = "baseline"
        self.outcomes: list[Outcome] = []
        self._key = key
        self._running = True

    async def run(self, workers: int) -> None:
        """Send until ``stop``; return when every request has ended."""
        await asyncio.gather(*(self._worker(i) for i in range(workers)))

    def stop(self) -> None:
        """Send no new request."""
        self._running = False

    async def _worker(self, index: int) -> None:
        # No keep-alive: a pooled connection must not outlive the ingress it went to.
        limits = httpx.Limits(max_keepalive_connections=0)
        auth = {"authorization": f"Bearer {self._key}"}
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            turn = index
            while self._running:
                ingress = self.rotation[turn % len(self.rotation)]
                turn += 1
                outcome = Outcome(ingress, self.phase, time.monotonic())
                self.outcomes.append(outcome)
                url = f"http://127.0.0.1:{self.ports[ingress]}/v1/chat/completions"
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        response = await client.post(url, json=BODY, headers=auth)
                except (TimeoutError, httpx.TimeoutException) as exc:
                    outcome.timed_out, outcome.client_error = True, repr(exc)
                except httpx.TransportError as exc:
                    outcome.client_error = repr(exc)
                else:
                    outcome.status, outcome.headers = response.status_code, dict(response.headers)
                    try:
                        outcome.body = response.json()
                    except ValueError:
                        outcome.body = response.text
                outcome.ended = time.monotonic()


@dataclass
class Scenario:
    """When each process was killed, when the usage stream had a leader again after the NATS node's death,
    and when everything was restarted (the killed ingress back in the rotation)."""

    killed_at: dict[str, float] = field(default_factory=dict)
    stream_leader_back_at: float = 0.0
    healed_at: float = 0.0


async def kill_in_turn(stack: Stack, traffic: Traffic) -> Scenario:
    """Baseline, then each victim killed with ``PHASE_S`` between kills, then everything restarted (NATS first,
    the ingress last) and traffic through both ingresses again."""
    scenario = Scenario()

    async def kill(name: str) -> None:
        traffic.phase = f"{name} killed"
        if name in traffic.rotation:
            traffic.rotation.remove(name)
        scenario.killed_at[name] = time.monotonic()
        await asyncio.to_thread(stack.kill, name)

    await asyncio.sleep(PHASE_S)
    for victim in VICTIMS:
        await kill(victim)
        await asyncio.sleep(PHASE_S)
    # The node leading the usage stream: its replicas elect a new leader, billing's consumers move.
    leader = await asyncio.to_thread(stack.nats_stream_leader, subjects.USAGE_STREAM) or "nats-0"
    await kill(leader)
    # Services restarted while the stream has no leader die in their start-up stream check: wait it out.
    await asyncio.to_thread(stack.wait_for_stream_leader, subjects.USAGE_STREAM, 60, leader)
    scenario.stream_leader_back_at = time.monotonic()
    await asyncio.sleep(max(0.0, scenario.killed_at[leader] + PHASE_S - time.monotonic()))
    traffic.phase = "restarted"
    for name in reversed(scenario.killed_at):
        await asyncio.to_thread(stack.restart, name)
    traffic.rotation = list(traffic.ports)
    scenario.healed_at = time.monotonic()
    traffic.phase = "healed"
    await asyncio.sleep(PHASE_S)
    traffic.stop()
    return scenario


def outcome_problems(outcomes: list[Outcome], scenario: Scenario) -> list[str]:
    """Every request that neither succeeded nor failed cleanly."""
    problems = []
    for o in outcomes:
        where = f"{o.phase} via {o.ingress} at +{o.started - outcomes[0].started:.1f}s"
        if o.timed_out:
            problems.append(f"hang ({where}): {o.client_error}")
        elif o.status is None:
            killed = scenario.killed_at.get(o.ingress)
            if killed is None or o.started > killed:
                problems.append(f"client error not explained by a killed ingress ({where}): {o.client_error}")
        elif o.status == 200:
            body = o.body if isinstance(o.body, dict) else {}
            content = (body.get("choices") or [{}])[0].get("message", {}).get("content")
            if body.get("object") != "chat.completion" or not content or body.get("id") != o.request_id:
                problems.append(f"200 without a completion ({where}): {o.body!r:.300}")
            elif not body.get("usage", {}).get("cost", 0) > 0:
                problems.append(f"200 without a cost ({where}): {o.body!r:.300}")
        elif o.status in CLEAN_ERROR_STATUSES:
            error = o.body.get("error") if isinstance(o.body, dict) else None
            if (
                not isinstance(error, dict)
                or set(error) != {"message", "type", "param", "code"}
                or not error["message"]
            ):
                problems.append(f"{o.status} without an OpenAI error envelope ({where}): {o.body!r:.300}")
        else:
            problems.append(f"unexpected status {o.status} ({where}): {o.body!r:.300}")
    return problems


async def wait_until_settled(conn: asyncpg.Connection, account_id: str, timeout_s: float = 60) -> None:
    """Until billing (or its sweeper) closed every reservation of the account and took back every credit lease
    on it (given back, or swept from a killed router)."""
    deadline = time.monotonic() + timeout_s
    while open_ := await conn.fetchval(
        """SELECT (SELECT count(*) FROM reservations WHERE account_id = $1 AND status = 'open')
                + (SELECT count(*) FROM leases WHERE account_id = $1 AND granted - attached - released > 0)""",
        account_id,
    ):
        assert time.monotonic() < deadline, f"{open_} reservations or leases still open after {timeout_s}s"
        await asyncio.sleep(0.5)


async def recorded_attempts(conn: asyncpg.Connection, account_id: str) -> tuple[dict[str, int], set[str]]:
    """Per request, what billing recorded of its attempts would cost (what the sweeper charges); and the
    requests with a succeeded attempt on record."""
    rows = await conn.fetch(
        """SELECT u.request_id, u.outcome, u.prompt_tokens, u.completion_tokens, u.input_price, u.output_price,
                  r.fee_bps
           FROM usage_records u JOIN reservations r USING (request_id)
           WHERE r.account_id = $1 AND (u.outcome <> 'failed' OR u.completion_tokens > 0)""",
        account_id,
    )
    costs: dict[str, int] = {}
    for r in rows:
        cost = cost_of(r["prompt_tokens"], r["completion_tokens"], r["input_price"], r["output_price"], r["fee_bps"])
        costs[r["request_id"]] = costs.get(r["request_id"], 0) + cost.client
    return costs, {r["request_id"] for r in rows if r["outcome"] == "succeeded"}


async def money_problems(conn: asyncpg.Connection, account_id: str, outcomes: list[Outcome]) -> list[str]:
    """Every way a request was charged other than once, for what it got."""
    reservations = {
        r["request_id"]: r
        for r in await conn.fetch(
            # A request's hold is its own 'reserve' transaction, or the credit lease it was admitted on (the
            # lease's own transaction held it).
            """SELECT r.request_id, r.status, r.charged,
                      count(t.id) FILTER (WHERE t.kind IN ('settle', 'expire')) AS closings,
                      count(t.id) FILTER (WHERE t.kind = 'reserve') + (r.lease_id IS NOT NULL)::int AS holds
               FROM reservations r LEFT JOIN ledger_transactions t ON t.request_id = r.request_id
               WHERE r.account_id = $1 GROUP BY r.request_id""",
            account_id,
        )
    }
    problems = [
        f"{request_id}: {r['holds']} holds and {r['closings']} settlements, status {r['status']}"
        for request_id, r in reservations.items()
        if r["closings"] != 1 or r["holds"] != 1 or r["status"] not in ("settled", "expired")
    ]
    # A request whose router was killed before settling it is released by the sweep, charged nothing: the
    # network's record of what its client received died with the router (a hoster's report is never billed).
    swept = {request_id for request_id, r in reservations.items() if r["status"] == "expired"}
    problems += [f"{request_id}: swept, yet charged" for request_id in swept if reservations[request_id]["charged"]]
    if len(swept) > 0.05 * len(outcomes):
        problems.append(f"{len(swept)} of {len(outcomes)} requests swept: more than a killed router holds")
    for o in outcomes:
        if o.status != 200 or o.request_id is None or o.request_id in swept:
            continue
        held = reservations.get(o.request_id)
        cost = round(o.body["usage"]["cost"] * MICRO)
        if held is None:
            problems.append(f"{o.request_id}: answered but never reserved, so never charged")
        elif held["charged"] <= 0 or held["charged"] != cost:
            problems.append(f"{o.request_id}: answered at cost {cost}, {held['status']} charging {held['charged']}")
    # Attempt records can arrive after the settlement (a billing replica died holding them): wait for them.
    answered = {o.request_id for o in outcomes if o.status == 200} - swept
    deadline = time.monotonic() + 40
    while True:
        recorded, succeeded = await recorded_attempts(conn, account_id)
        late = [
            f"{request_id}: charged {r['charged']} beyond the {recorded.get(request_id, 0)} of its recorded attempts"
            for request_id, r in reservations.items()
            if r["charged"] > recorded.get(request_id, 0)
        ]
        late += [
            f"{request_id}: answered, but billing has no record of its attempt" for request_id in answered - succeeded
        ]
        if not late or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    problems += late
    known = {o.request_id for o in outcomes}
    unknown = [request_id for request_id in reservations if request_id not in known]
    without_answer = sum(1 for o in outcomes if o.request_id is None)
    if len(unknown) > without_answer:
        problems.append(f"{len(unknown)} reservations of no request we sent ({without_answer} got no answer)")
    account = await conn.fetchrow("SELECT balance, reserved FROM accounts WHERE id = $1", account_id)
    assert account is not None
    charged = sum(r["charged"] for r in reservations.values())
    if account["balance"] != CREDITS * MICRO - charged or account["reserved"] != 0:
        problems.append(f"account {dict(account)} after charges of {charged} from {CREDITS * MICRO}")
    return problems


async def books(conn: asyncpg.Connection, account_id: str) -> str:
    """How the account's reservations were closed."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n, sum(charged) AS charged FROM reservations WHERE account_id = $1 GROUP BY 1",
        account_id,
    )
    return "  reservations: " + ", ".join(f"{r['n']} {r['status']} ({r['charged']} charged)" for r in rows)


def summary(outcomes: list[Outcome], scenario: Scenario, stack: Stack) -> str:
    """Outcomes per phase (and per ingress), the kill times and where the logs are."""
    start = outcomes[0].started if outcomes else 0.0
    lines = [f"{len(outcomes)} requests; logs in {stack.config.log_dir}"]
    lines += [f"  killed {name} at +{at - start:.1f}s" for name, at in scenario.killed_at.items()]
    lines.append(f"  the usage stream had a new leader at +{scenario.stream_leader_back_at - start:.1f}s")
    lines.append(f"  healed at +{scenario.healed_at - start:.1f}s")
    for phase in dict.fromkeys(o.phase for o in outcomes):
        ours = [o for o in outcomes if o.phase == phase]
        kinds = Counter(f"{o.kind} via {o.ingress}" for o in ours)
        lines.append(f"  {phase:<22}{len(ours):>5}  " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
    return "\n".join(lines)


async def test_killing_one_replica_of_everything_in_turn_loses_no_request_and_charges_each_once(
    topology: Stack,
) -> None:
    account_id, key = topology.create_account(credits=str(CREDITS), name="topology")
    ports = dict(zip(topology.config.ingress_names, topology.config.ingress_ports, strict=True))
    traffic = Traffic(ports, key)
    sending = asyncio.create_task(traffic.run(WORKERS))
    try:
        scenario = await kill_in_turn(topology, traffic)
    finally:
        traffic.stop()
        await sending
    outcomes = traffic.outcomes
    report = summary(outcomes, scenario, topology)
    print(report)

    problems = outcome_problems(outcomes, scenario)
    assert not problems, "\n".join([report, *problems[:20]])

    conn = await asyncpg.connect(topology.database_url)
    try:
        await wait_until_settled(conn, account_id)
        problems = await money_problems(conn, account_id, outcomes)
        closed = await books(conn, account_id)
        print(closed)
        report += "\n" + closed
    finally:
        await conn.close()
    assert not problems, "\n".join([report, *problems[:20]])
    assert topology.computeshare("ledger", "check") == {"ok": True, "problems": []}

    succeeded = [o for o in outcomes if o.status == 200]
    assert len(succeeded) >= 0.8 * len(outcomes), report
    healed = [o for o in outcomes if o.started >= scenario.healed_at]
    assert sum(o.status == 200 for o in healed) >= 0.8 * len(healed), report
    assert {o.ingress for o in healed if o.status == 200} == set(ports), report
