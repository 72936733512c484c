"""The network counts the tokens of a registered model against a real engine: llama.cpp (llama-cpp-python's
server on a tiny random model) behind hoster agents, on a real nats-server and PostgreSQL.

An honest hoster's usage, over a hundred requests of every shape (streamed or not, ``n`` 1 and 2, tools, a
text completion, a long conversation), is what llama.cpp itself counts within ``COUNT_TOLERANCE``, and the
client is shown what it is billed. Hosters whose server inflates the engine's usage (a proxy in front of the
same engine) are billed the network's count, flagged and cooled down; one that streams nothing but a usage
chunk is paid nothing. And credit for exactly 50 counted requests admits exactly 50 of 200 sent at once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from libs.contracts import subjects
from libs.contracts.hosters import LiveHoster, LiveHosters
from libs.contracts.pricing import COUNT_TOLERANCE, TEMPLATE_TOKENS, cost_of
from libs.devstack.engine import LlamaCppSpec
from libs.devstack.processes import free_port
from libs.devstack.stack import (
    DEMO_HOSTER_ID,
    DEMO_MODEL,
    AdapterSpec,
    AgentSpec,
    SimulatorSpec,
    Stack,
    demo_hoster,
    throwaway_config,
)
from libs.devstack.tinymodel import CORPUS, TinyModel, tiny_model
from libs.tokens import (
    ChoiceText,
    ModelTokenizer,
    TokenizerFiles,
    count_chat_prompt,
    count_completion,
    count_text_prompt,
    load_model_tokenizer,
)
from tests.e2e.lying_upstream import EMPTY_CLAIM, EMPTY_STREAM, LIES, LyingUpstream
from tests.e2e.records import routing_record
from tests.e2e.test_money import burst, settled
from tests.waits import POLL_S

pytestmark = pytest.mark.e2e

SEED = 0
MAX_TOKENS = 8
HONEST = "honest-llamacpp"
LIARS = {lie: f"liar-{lie.replace('.', '-')}" for lie in [*LIES, EMPTY_STREAM]}
# Honest and lying hosters' prices (credits per million tokens): the liars are cheaper, so ``tier: cheapest``
# tries a liar first when both are allowed. The router's default fee.
HONEST_PRICES, LIAR_PRICES = (Decimal("0.50"), Decimal("1.50")), (Decimal("0.40"), Decimal("1.20"))
FEE_BPS = 1000
# The registered model a simulator serves behind the platform adapter (the demo hoster), at its prices.
SIM_MODEL = "counted-sim"
SIM_PRICES = (500_000, 1_500_000)
LINES = [line for line in CORPUS.read_text().splitlines() if line.strip()]
SYSTEM = "You answer in one short sentence, plainly."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_sheep",
            "description": "Where the farmer's sheep are now, and how many.",
            "parameters": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
                "required": ["field"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "bake_bread",
            "description": "Bake loaves in the village oven.",
            "parameters": {"type": "object", "properties": {"loaves": {"type": "integer"}}},
        },
    },
]


def agent_config(prices: tuple[Decimal, Decimal]) -> dict[str, Any]:
    """A llama.cpp hoster's agent config: the engine's model, chat and text completions, 8 at once (the engine
    queues what it cannot compute at once; the router hears the hoster's load with its heartbeats, so a
    capacity of what the test sends at once would refuse a request sent right after another's answer)."""
    model = {"name": DEMO_MODEL, "upstream_model": DEMO_MODEL, "input_price": str(prices[0]),
             "output_price": str(prices[1]), "context_length": 2048,
             "endpoints": ["chat.completions", "completions"]}  # fmt: skip
    return {"models": [model], "capacity": 8, "profile": "llamacpp"}


@pytest.fixture(scope="module")
def model() -> TinyModel:
    """The tiny random model llama.cpp serves, and its tokenizer files."""
    return tiny_model(SEED)


@pytest.fixture(scope="module")
def engine(model: TinyModel) -> LlamaCppSpec:
    """llama-cpp-python's server on a free port, serving the model as ``DEMO_MODEL``."""
    return LlamaCppSpec("llamacpp", free_port(), {DEMO_MODEL: model})


@pytest.fixture(scope="module")
def stack(model: TinyModel, engine: LlamaCppSpec) -> Iterator[Stack]:
    """The engine behind an honest agent and, through the lying proxy, behind one agent per lie (each
    registered with its own credentials); a simulator behind the platform adapter serving ``SIM_MODEL``; both
    models registered with the tiny model's tokenizer."""
    proxy = LyingUpstream(engine.base_url, free_port()).start()
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": str(MAX_TOKENS)})
    agents = [AgentSpec(HONEST, engine.base_url, agent_config(HONEST_PRICES))]
    agents += [AgentSpec(name, proxy.base_url(lie), agent_config(LIAR_PRICES)) for lie, name in LIARS.items()]
    config = throwaway_config(
        engines=[engine],
        simulators=[simulator],
        adapters=[
            AdapterSpec("hoster_adapter", [demo_hoster(simulator.base_url, model=SIM_MODEL, upstream_model=DEMO_MODEL)])
        ],
        agents=agents,
        service_env={
            "CS_ROUTER_HOSTER_TTL_S": "2",
            "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5",
            "CS_ADAPTER_KEEPALIVE_INTERVAL_S": "2",
            "CS_INGRESS_IDLE_TIMEOUT_S": "10",
            "CS_ROUTER_LEASE_IDLE_S": "0.3",  # leases go back soon after a test's requests (``settled``)
            "CS_ROUTER_PLATFORM_FEE_BPS": str(FEE_BPS),
        },
    )
    try:
        running = Stack(config).start()
        try:
            for name in (DEMO_MODEL, SIM_MODEL):
                registered = running.computeshare(
                    "model", "register", name,
                    "--tokenizer", str(model.tokenizer_json), "--tokenizer-config", str(model.tokenizer_config),
                )  # fmt: skip
                assert registered["model"] == name, registered
            yield running
        finally:
            running.stop()
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def ours(model: TinyModel) -> ModelTokenizer:
    """The network's own counter: the registered tokenizer files, loaded as the router and ingress load them."""
    return load_model_tokenizer(TokenizerFiles(model.tokenizer_json.read_bytes(), model.tokenizer_config.read_bytes()))


def hoster_id(stack: Stack, name: str) -> str:
    """The id the agent named ``name`` was registered under."""
    [agent] = [a for a in stack.config.agents if a.name == name]
    return agent.hoster_id


async def hosters(stack: Stack) -> dict[str, LiveHoster]:
    """Every hoster as the router sees it now (``router.hosters.list``), by id."""
    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-counted-engine", "test")))
    try:
        reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=5)
    finally:
        await nc.close()
    return {h.hoster_id: h for h in LiveHosters.model_validate_json(reply.data).hosters}


async def until_seen(
    stack: Stack, hoster: str, holds: Callable[[LiveHoster], bool], timeout_s: float = 10
) -> LiveHoster:
    """The hoster as the router sees it, once ``holds`` (every router observes an attempt when its request
    settles, a moment after the client's answer)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        seen = (await hosters(stack)).get(hoster)
        if seen is not None and holds(seen):
            return seen
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(POLL_S)


@dataclass
class Answer:
    """What a client received: the request's id, each choice's text as the network counts it, its usage."""

    request_id: str
    choices: list[ChoiceText]
    usage: dict[str, Any]


def answer_of(response: httpx.Response, stream: bool, text: bool) -> Answer:
    """Parse a chat or text completion, streamed (server-sent events) or whole."""
    assert response.status_code == 200, response.text
    if not stream:
        doc = response.json()
        events = [{**doc, "choices": [{**c, "delta": c.get("message") or {}} for c in doc["choices"]]}]
    else:
        lines = response.text.splitlines()
        assert "data: [DONE]" in lines, response.text[-300:]
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    parts: dict[int, dict[str, Any]] = {}
    for event in events:
        for choice in event.get("choices") or ():
            part = parts.setdefault(choice["index"], {"content": "", "calls": {}, "finish": None})
            delta = {"content": choice.get("text")} if text else choice.get("delta") or {}
            part["content"] += delta.get("content") or ""
            for position, call in enumerate(delta.get("tool_calls") or ()):
                slot = part["calls"].setdefault(call.get("index", position), ["", ""])
                slot[0] += call["function"].get("name") or ""
                slot[1] += call["function"].get("arguments") or ""
            part["finish"] = choice.get("finish_reason") or part["finish"]
    choices = [
        ChoiceText(
            content=p["content"],
            tool_calls=[tuple(c) for _, c in sorted(p["calls"].items())],
            ended=p["finish"] in ("stop", "tool_calls"),
        )
        for _, p in sorted(parts.items())
    ]
    [usage] = [e["usage"] for e in events if e.get("usage")]
    return Answer(events[0]["id"], choices, usage)


def conversation(i: int) -> list[dict[str, Any]]:
    """A long multi-turn conversation (system, then user and assistant turns of the corpus's prose: a few
    thousand characters), different for each ``i``."""
    turns: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM + " " + " ".join(LINES[i : i + 3])}]
    for turn in range(8):
        start = 3 + i + 3 * turn
        turns.append({"role": "user", "content": f"And then, part {turn + 1}? " + LINES[start]})
        turns.append({"role": "assistant", "content": " ".join(LINES[start + 1 : start + 3])})
    turns.append({"role": "user", "content": "So how does the story end?"})
    return turns


def honest_bodies() -> list[tuple[str, dict[str, Any]]]:
    """Over a hundred requests, each an endpoint (``chat/completions`` or ``completions``) and a body: streamed
    or not, ``n`` 1 or 2, a short question, the same with tools offered, a long conversation, and a text
    completion; the prompts differ from one round to the next."""
    bodies: list[tuple[str, dict[str, Any]]] = []
    for i in range(7):
        question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": LINES[20 + i]}]
        for stream in (False, True):
            for n in (1, 2):
                common: dict[str, Any] = {"model": DEMO_MODEL, "max_tokens": MAX_TOKENS, "n": n, "seed": i}
                if stream:
                    common |= {"stream": True, "stream_options": {"include_usage": True}}
                bodies += [
                    ("chat/completions", {**common, "messages": question}),
                    ("chat/completions", {**common, "messages": question, "tools": TOOLS, "tool_choice": "auto"}),
                    ("chat/completions", {**common, "messages": conversation(i)}),
                    ("completions", {**common, "prompt": " ".join(LINES[30 + i : 32 + i])}),
                ]
    return bodies


async def engine_prompt_tokens(
    http: httpx.AsyncClient, engine: LlamaCppSpec, endpoint: str, body: dict[str, Any]
) -> int:
    """llama.cpp's own count of a request's prompt: the same request sent to the engine itself, unstreamed
    (a stream carries no usage), one token generated."""
    direct = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n")} | {"max_tokens": 1}
    response = await http.post(f"{engine.base_url}/{endpoint}", json=direct)
    assert response.status_code == 200, response.text
    tokens: int = response.json()["usage"]["prompt_tokens"]
    return tokens


async def engine_text_tokens(http: httpx.AsyncClient, engine: LlamaCppSpec, choices: list[ChoiceText]) -> int:
    """llama.cpp's own count of the text a client received (its tokenizer, ``POST /extras/tokenize``)."""
    total = 0
    for piece in (p for choice in choices for p in choice.texts()):
        response = await http.post(
            f"{engine.base_url.removesuffix('/v1')}/extras/tokenize", json={"model": DEMO_MODEL, "input": piece}
        )
        assert response.status_code == 200, response.text
        total += len(response.json()["tokens"])
    return total


def our_prompt(ours: ModelTokenizer, endpoint: str, body: dict[str, Any]) -> int:
    """The network's count of a request's prompt, as the router counts it."""
    return count_text_prompt(ours, body["prompt"]) if endpoint == "completions" else count_chat_prompt(ours, body)


@dataclass
class Served:
    """One request to the honest hoster: our counts, llama.cpp's own, the bound, what was billed and shown."""

    endpoint: str
    body: dict[str, Any]
    ours: tuple[int, int]
    engine: tuple[int, int]
    claimed: tuple[int, int]
    shown: tuple[int, int]
    billed: tuple[int, int]
    problems: list[str]

    def expected(self) -> tuple[int, int]:
        """What the network bills: the lower of the claim and our count (a stream's claim is the adapter's
        estimate, no claim: our count), and never past the client's ``max_tokens``."""
        prompt, completion = self.ours
        if not self.body.get("stream"):
            prompt, completion = min(prompt, self.claimed[0]), min(completion, self.claimed[1])
        return prompt, min(completion, self.body["max_tokens"] * self.body.get("n", 1))


async def test_an_honest_engine_over_a_hundred_requests_is_billed_our_count_within_tolerance_of_its_own(
    stack: Stack, engine: LlamaCppSpec, ours: ModelTokenizer
) -> None:
    honest = hoster_id(stack, HONEST)
    account_id, key = stack.create_account(credits="100")
    bodies = honest_bodies()
    assert len(bodies) >= 100
    assert any(len(json.dumps(b.get("messages"))) > 3000 for _, b in bodies)
    limit = asyncio.Semaphore(3)
    headers = {"authorization": f"Bearer {key}"}

    async def one(http: httpx.AsyncClient, endpoint: str, body: dict[str, Any]) -> Served:
        stream = bool(body.get("stream"))
        async with limit:
            response = await http.post(f"{stack.config.api_base}/{endpoint}", json={**body, "allow_hosters": [honest]},
                                       headers=headers)  # fmt: skip
        assert response.headers.get("x-computeshare-hoster") == honest, response.text
        answer = answer_of(response, stream, text=endpoint == "completions")
        record = await asyncio.to_thread(routing_record, stack, key, answer.request_id, settled=True)
        [attempt] = record["attempts"]
        claimed = (attempt["prompt_tokens"], attempt["completion_tokens"])
        if stream:  # the engine reports no usage on a stream (the claim is the adapter's estimate): ask it
            engine_counts = (await engine_prompt_tokens(http, engine, endpoint, body),
                             await engine_text_tokens(http, engine, answer.choices))  # fmt: skip
        else:
            engine_counts = claimed
        problems = [f"flagged: {record['usage_discrepancy']}"] if record["usage_discrepancy"] else []
        if "estimated" in answer.usage:
            problems.append("shown as estimated")
        if answer.usage["cost"] != pytest.approx(record["cost"]):
            problems.append(f"shown cost {answer.usage['cost']}, billed {record['cost']}")
        return Served(
            endpoint, body, (our_prompt(ours, endpoint, body), count_completion(ours, answer.choices)), engine_counts,
            claimed, (answer.usage["prompt_tokens"], answer.usage["completion_tokens"]),
            (record["prompt_tokens"], record["completion_tokens"]), problems,
        )  # fmt: skip

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=8)) as http:
        served = await asyncio.gather(*(one(http, endpoint, body) for endpoint, body in bodies))
    wrong = []
    for s in served:
        if any(abs(a - b) > COUNT_TOLERANCE for a, b in zip(s.ours, s.engine, strict=True)):
            s.problems.append(f"our counts {s.ours}, llama.cpp's {s.engine}")
        if s.shown != s.billed or s.billed != s.expected():
            s.problems.append(f"shown {s.shown}, billed {s.billed}, expected {s.expected()}")
        if s.problems:
            wrong.append((s.endpoint, {k: v for k, v in s.body.items() if k != "messages"}, s.problems))
    assert not wrong, f"{len(wrong)} of {len(served)} wrong:\n" + "\n".join(map(str, wrong))
    await settled(stack, account_id)
    seen = await until_seen(stack, honest, lambda h: h.attempts >= len(bodies))
    assert (seen.usage_discrepancies, seen.cooling) == (0, False)
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " ".join(LINES[40:43])}]


@pytest.mark.parametrize("lie", list(LIES))
async def test_an_inflating_hoster_is_billed_our_count_flagged_and_cooled_down(
    stack: Stack, ours: ModelTokenizer, lie: str
) -> None:
    liar = hoster_id(stack, LIARS[lie])
    account_id, key = stack.create_account(credits="100")
    body = {"model": DEMO_MODEL, "messages": QUESTION, "max_tokens": MAX_TOKENS, "allow_hosters": [liar]}
    prompt = count_chat_prompt(ours, body)
    assert LIES[lie](prompt) > prompt + 2 * COUNT_TOLERANCE  # the lie is past the tolerance, whatever BOS
    to_cool = 3  # CS_ROUTER_DISCREPANCIES_TO_COOL's default
    async with httpx.AsyncClient(base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"},
                                 timeout=60) as http:  # fmt: skip
        for seed in range(to_cool):
            response = await http.post("/chat/completions", json={**body, "seed": seed})
            assert response.headers.get("x-computeshare-hoster") == liar, response.text
            answer = answer_of(response, stream=False, text=False)
            completion = count_completion(ours, answer.choices)
            record = await asyncio.to_thread(routing_record, stack, key, answer.request_id, settled=True)
            [attempt] = record["attempts"]
            claimed = (attempt["prompt_tokens"], attempt["completion_tokens"])
            billed = (min(claimed[0], prompt), min(claimed[1], completion))
            assert billed[0] == prompt  # the engine's own count is ours within the tolerance: the lie is above it
            assert sum(billed) < sum(claimed)
            assert (answer.usage["prompt_tokens"], answer.usage["completion_tokens"]) == billed, (answer, claimed)
            assert (record["prompt_tokens"], record["completion_tokens"]) == billed, record
            # Flagged, naming the claim (past the prompt's bound, which is our count and the tolerance).
            assert f"reported {claimed[0]} prompt and {claimed[1]} completion" in (record["usage_discrepancy"] or "")
            flagged = seed + 1
            await until_seen(stack, liar, lambda h: h.usage_discrepancies == flagged)  # noqa: B023 (awaited here)
        # Discrepancies in a row cool it down: out of rotation, and a request only it may serve is refused.
        seen = await until_seen(stack, liar, lambda h: h.cooling)
        assert seen.usage_discrepancies == to_cool
        refused = await http.post("/chat/completions", json=body)
        assert refused.status_code == 503, refused.text
        assert "cooling down" in refused.json()["error"]["message"]
    await settled(stack, account_id)
    charged = stack.computeshare("account", "show", account_id)
    assert charged["reserved"] == 0
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


async def test_a_hoster_streaming_only_a_usage_claim_is_paid_nothing(stack: Stack, ours: ModelTokenizer) -> None:
    liar, honest = hoster_id(stack, LIARS[EMPTY_STREAM]), hoster_id(stack, HONEST)
    account_id, key = stack.create_account(credits="100")
    body = {"model": DEMO_MODEL, "messages": QUESTION, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    async with httpx.AsyncClient(base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"},
                                 timeout=60) as http:  # fmt: skip
        # It alone may serve: the client gets an error, is shown no usage, and pays nothing.
        alone = await http.post("/chat/completions", json={**body, "allow_hosters": [liar]})
        events = [json.loads(line[6:]) for line in alone.text.splitlines() if line.startswith("data: {")]
        assert alone.status_code >= 500 or any("error" in e for e in events), alone.text
        assert not [e for e in events if e.get("usage") or e.get("choices")], alone.text
        record = await asyncio.to_thread(routing_record, stack, key, alone.headers["x-request-id"], settled=True)
        [failed] = record["attempts"]
        assert (failed["hoster_id"], failed["outcome"], record["cost"]) == (liar, "failed", 0), record
        await settled(stack, account_id)
        assert stack.computeshare("account", "show", account_id)["balance"] == 100
        # Beside an honest hoster (dearer, so tried second): the request fails over to it, and the client pays
        # the honest hoster's attempt alone, on our count.
        response = await http.post("/chat/completions", json={**body, "allow_hosters": [liar, honest],
                                                               "tier": "cheapest"})  # fmt: skip
        answer = answer_of(response, stream=True, text=False)
        record = await asyncio.to_thread(routing_record, stack, key, answer.request_id, settled=True)
    failed, served = record["attempts"]
    assert (failed["hoster_id"], failed["outcome"]) == (liar, "failed"), record
    assert (failed["prompt_tokens"], failed["completion_tokens"]) == (EMPTY_CLAIM["prompt_tokens"],
                                                                     EMPTY_CLAIM["completion_tokens"])  # fmt: skip
    assert (served["hoster_id"], served["outcome"]) == (honest, "succeeded"), record
    prompt, completion = count_chat_prompt(ours, body), count_completion(ours, answer.choices)
    assert (answer.usage["prompt_tokens"], answer.usage["completion_tokens"]) == (prompt, completion)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
    price = cost_of(prompt, completion, int(HONEST_PRICES[0] * 10**6), int(HONEST_PRICES[1] * 10**6), FEE_BPS)
    await settled(stack, account_id)
    assert record["cost"] == pytest.approx(price.client / 1e6)
    assert stack.computeshare("account", "show", account_id)["balance"] == pytest.approx(100 - price.client / 1e6)
    earnings = {row["hoster"]: row["earned"] for row in stack.computeshare("hoster", "earnings")}
    assert earnings.get(liar, 0) == 0
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


async def test_credit_for_exactly_50_counted_requests_of_200_concurrent_serves_exactly_50(
    stack: Stack, ours: ModelTokenizer
) -> None:
    """As ``test_money``'s, for a registered model: each request reserves its counted prompt (plus the
    tolerance) and ``max_tokens`` at the hoster's prices, so credit for 50 such reservations admits 50."""
    content = " ".join(LINES[:6])
    payload: dict[str, Any] = {
        "model": SIM_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS,
        # Every request asks for exactly MAX_TOKENS, and its first token comes late enough that all requests
        # are admitted (or refused) before any settles and frees what its charge did not use.
        "simulator": {"reply_tokens": MAX_TOKENS, "ttft_ms": 2500},
    }  # fmt: skip
    prompt = count_chat_prompt(ours, payload)
    # The simulator claims a quarter of the characters: at least our count and within the tolerance, so the
    # prompt is billed on our count and is no discrepancy.
    assert prompt <= len(content) // 4 <= prompt + COUNT_TOLERANCE
    reserved = cost_of(prompt + COUNT_TOLERANCE, MAX_TOKENS, *SIM_PRICES, FEE_BPS).client
    # Reserved on the body's bytes, 50 requests' credit would admit far fewer.
    byte_reserved = cost_of(len(json.dumps(payload)) + TEMPLATE_TOKENS, MAX_TOKENS, *SIM_PRICES, FEE_BPS).client
    assert 50 * reserved // byte_reserved < 40
    account_id, key = stack.create_account(credits=str(Decimal(50 * reserved) / 10**6))
    responses = await burst([stack.config.api_base], key, 200, payload)
    assert Counter(r.status_code for r in responses) == {200: 50, 402: 150}
    assert next(r for r in responses if r.status_code == 402).json()["error"]["code"] == "insufficient_credits"
    await settled(stack, account_id)
    served = [answer_of(r, stream=False, text=False) for r in responses if r.status_code == 200]
    # The simulator's claim is MAX_TOKENS words; our count of the words it sent is at least that.
    completions = {min(MAX_TOKENS, count_completion(ours, a.choices)) for a in served}
    [completion] = completions
    charge = cost_of(prompt, completion, *SIM_PRICES, FEE_BPS).client
    assert all((a.usage["prompt_tokens"], a.usage["completion_tokens"]) == (prompt, completion) for a in served)
    assert sum(a.usage["cost"] for a in served) == pytest.approx(50 * charge / 1e6)
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT amount, charged FROM reservations WHERE account_id = $1", account_id)
    finally:
        await conn.close()
    assert sorted((r["amount"], r["charged"]) for r in rows) == [(reserved, charge)] * 50
    account = stack.computeshare("account", "show", account_id)
    assert account["reserved"] == 0
    assert account["balance"] == pytest.approx(50 * (reserved - charge) / 1e6, abs=1e-9)
    discrepancies = (await hosters(stack))[DEMO_HOSTER_ID].usage_discrepancies
    assert discrepancies == 0
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}
