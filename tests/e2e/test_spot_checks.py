"""Spot checks against real engines: hosters of one registered model, all llama.cpp servers (llama-cpp-python's
server on tiny random models) behind real agents with their own credentials, on a real nats-server and
PostgreSQL, checked by the router through the public API with the network's own key.

- ``reference`` and ``honest``: the registered weights at F16 (the reference is designated by the operator);
- ``q8`` and ``q4``: the same weights quantized to Q8_0 and Q4_0, declaring ``fp16``;
- ``other``: other random weights behind the same tokenizer, under the same name;
- ``temperature-zero``: the real weights only for requests with ``temperature`` 0, the other weights otherwise;
- ``looks-checked``: the real weights for whatever looks like a check (the shipped prompt pool, the old probe
  prompt, a greedy request for 5 top logprobs, a 16-token limit, a request right after another), the other
  weights otherwise.

The checks draw their conversations from an operator's pool the hosters never saw. Every dishonest hoster is
``failed`` within ``MAX_CHECKS`` of its checks, the honest one never fails a check and is ``verified``; then
``trusted_only`` routes only to verified hosters, ``/v1/models`` counts them and each routing record says the
verdict of the hoster that served."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client

from libs.contracts import subjects
from libs.contracts.hosters import LiveHosters
from libs.contracts.management import HosterDetailQuery, HosterDetailReply
from libs.contracts.verification import SpotCheckJudged
from libs.devstack.engine import LlamaCppSpec
from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AgentSpec, Stack, throwaway_config
from libs.devstack.tinymodel import TinyModel, tiny_model
from services.router.covert import PromptPool
from tests.e2e.records import routing_record
from tests.e2e.switching_upstream import SwitchingUpstream, shipped_prompts
from tests.waits import until_router_has_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

# A dishonest hoster must be failed within this many of its checks (README, "Verification": the sequential
# test fails a hoster that fails every check in 3, one that fails 40% of them in about 13 on average).
MAX_CHECKS = 60
HONEST = ("reference", "honest")
DISHONEST = ("q8", "q4", "other", "temperature-zero", "looks-checked")
# The operator's own prompt pool: conversations no hoster has seen (the shipped pool is public).
OPERATOR_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "operator_prompts.jsonl"


def agent_config(quantization: str = "fp16") -> dict[str, Any]:
    model = {"name": DEMO_MODEL, "upstream_model": DEMO_MODEL, "input_price": "0.5", "output_price": "1.5",
             "context_length": 2048, "quantization": quantization}  # fmt: skip
    return {"models": [model], "capacity": 8, "profile": "llamacpp"}


@pytest.fixture(scope="module")
def models() -> dict[str, TinyModel]:
    """The registered weights (seed 0) at F16, Q8_0 and Q4_0, and other weights (seed 1) at F16."""
    return {
        "f16": tiny_model(0, weights="f16"),
        "q8_0": tiny_model(0, weights="q8_0"),
        "q4_0": tiny_model(0, weights="q4_0"),
        "other": tiny_model(1, weights="f16"),
    }


@pytest.fixture(scope="module")
def engines(models: dict[str, TinyModel]) -> dict[str, LlamaCppSpec]:
    """One llama.cpp server per weights, each serving them as ``DEMO_MODEL`` (started by the stack)."""
    return {name: LlamaCppSpec(f"llamacpp-{name.replace('_', '-')}", free_port(), {DEMO_MODEL: model})
            for name, model in models.items()}  # fmt: skip


@pytest.fixture(scope="module")
def proxy(engines: dict[str, LlamaCppSpec]) -> Iterator[SwitchingUpstream]:
    """The switching hosters' server: the F16 weights or the other ones, by its rules."""
    running = SwitchingUpstream(engines["f16"].base_url, engines["other"].base_url, free_port()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stack(
    models: dict[str, TinyModel],
    engines: dict[str, LlamaCppSpec],
    proxy: SwitchingUpstream,
) -> Iterator[Stack]:
    pool = OPERATOR_PROMPTS
    assert not {m["content"] for c in PromptPool.load(pool) for m in c} & shipped_prompts()
    agents = [
        AgentSpec("reference", engines["f16"].base_url, agent_config()),
        AgentSpec("honest", engines["f16"].base_url, agent_config()),
        AgentSpec("q8", engines["q8_0"].base_url, agent_config()),
        AgentSpec("q4", engines["q4_0"].base_url, agent_config()),
        AgentSpec("other", engines["other"].base_url, agent_config()),
        AgentSpec("temperature-zero", proxy.base_url("temperature-zero"), agent_config()),
        AgentSpec("looks-checked", proxy.base_url("looks-checked"), agent_config()),
    ]
    config = throwaway_config(
        engines=list(engines.values()),
        agents=agents,
        spot_check_credits="1000",
        # About one check every 3 s per hoster on average: the whole run in minutes.
        spot_checks_per_hour=1200,
        service_env={
            "CS_ROUTER_SPOT_CHECK_PROMPTS_FILE": str(pool),
            "CS_ROUTER_SPOT_CHECK_CONCURRENCY": "2",
            "CS_ROUTER_SPOT_CHECK_MAX_TOKENS": "64",
            "CS_ROUTER_MAX_TOKENS_PER_S": "1e9",
        },
    )
    running = Stack(config).start()
    try:
        f16 = models["f16"]
        running.computeshare("model", "register", DEMO_MODEL, "--tokenizer", str(f16.tokenizer_json),
                             "--tokenizer-config", str(f16.tokenizer_config))  # fmt: skip
        running.computeshare("model", "reference", DEMO_MODEL, "--hoster", "reference")
        asyncio.run(reference_known(running))
        yield running
    finally:
        running.stop()


async def reference_known(stack: Stack) -> None:
    """Until the router checks the model against its reference (see ``caught`` for the checks before)."""
    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-spot-checks", "test")))
    try:
        await until_router_has_reference(nc, DEMO_MODEL)
    finally:
        await nc.close()


def ids(stack: Stack) -> dict[str, str]:
    return {a.name: a.hoster_id for a in stack.config.agents}


async def verdicts(nc: Client) -> dict[str, str]:
    """Each hoster's verdict on the model, as a router says (``router.hosters.list``)."""
    reply = LiveHosters.model_validate_json((await nc.request(subjects.LIST_HOSTERS, b"", timeout=5)).data)
    return {h.hoster_id: h.verifications.get(DEMO_MODEL, "unchecked") for h in reply.hosters}


@pytest.fixture(scope="module")
def caught(stack: Stack) -> dict[str, int]:
    """Watch the judged checks until every dishonest hoster is failed and the honest one verified: the
    number of checks each dishonest hoster took to be failed. Fails at once if the honest hoster fails a
    check or a dishonest one is not failed within ``MAX_CHECKS``."""
    by_id = {v: k for k, v in ids(stack).items()}

    async def watch() -> dict[str, int]:
        nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-spot-checks", "test")))
        judged: asyncio.Queue[SpotCheckJudged] = asyncio.Queue()

        async def on_judged(msg: Any) -> None:
            judged.put_nowait(SpotCheckJudged.model_validate_json(msg.data))

        await nc.subscribe(subjects.SPOT_CHECK_JUDGED, cb=on_judged)
        checks: Counter[str] = Counter()
        found: dict[str, int] = {}
        try:
            while True:
                event = await judged.get()
                if event.evidence.reference != ids(stack)["reference"]:
                    # Compared with peers: begun in the seconds between the model's registration and the
                    # router hearing of its reference (the stack's setup), not what this test is about.
                    continue
                name = by_id[event.hoster_id]
                checks[name] += 1
                assert name != "honest" or event.evidence.passed, f"the honest hoster failed a check: {event}"
                now = await verdicts(nc)
                for hoster in DISHONEST:
                    if hoster not in found and now.get(ids(stack)[hoster]) == "failed":
                        found[hoster] = checks[hoster]
                    assert hoster in found or checks[hoster] <= MAX_CHECKS, f"{hoster} not failed: {checks}"
                if len(found) == len(DISHONEST) and now.get(ids(stack)["honest"]) == "verified":
                    return found
        finally:
            await nc.close()

    # The checks (one every few seconds per hoster) bound the time; this only ends a run that hangs.
    return asyncio.run(asyncio.wait_for(watch(), 1800))


def test_every_dishonest_hoster_is_failed_and_the_honest_one_verified(stack: Stack, caught: dict[str, int]) -> None:
    assert set(caught) == set(DISHONEST)
    assert all(1 <= n <= MAX_CHECKS for n in caught.values()), caught
    print("checks until failed:", caught)


def test_the_switching_hosters_were_caught_while_serving_the_real_weights_to_some_checks(
    proxy: SwitchingUpstream, caught: dict[str, int]
) -> None:
    # Shown, not assumed: each served the registered weights to some of its requests and the other weights to
    # the rest, and was failed all the same.
    for rule, guesser in proxy.guessers.items():
        assert guesser.served["real"] > 0, (rule, guesser.served)
        assert guesser.served["substitute"] > 0, (rule, guesser.served)


def test_trusted_only_goes_only_to_verified_hosters_and_the_models_list_counts_them(
    stack: Stack, caught: dict[str, int], api_key: str
) -> None:
    names = ids(stack)
    trusted = {names["reference"], names["honest"]}
    served: Counter[str] = Counter()
    with httpx.Client(base_url=stack.config.api_base, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=60) as client:  # fmt: skip
        # A trust score above 0.8 takes about a hundred clean requests (README, "Routing, trust and failover"):
        # the verified hosters earn it here (the reference served every check's reference request already).
        for name in HONEST:
            for i in range(110):
                body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": f"Warm up {i}"}],
                        "max_tokens": 2, "allow_hosters": [names[name]]}  # fmt: skip
                assert client.post("/chat/completions", json=body).status_code == 200
        for i in range(24):
            body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": f"Say hello {i}"}],
                    "max_tokens": 8, "trusted_only": True}  # fmt: skip
            reply = client.post("/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            served[reply.headers["x-computeshare-hoster"]] += 1
            if i == 0:
                record = routing_record(stack, api_key, reply.json()["id"])
                assert record["attempts"][-1]["verification"] == "verified"
        models = client.get("/models").json()["data"]
    assert set(served) <= trusted, served
    [listed] = [m for m in models if m["id"] == DEMO_MODEL]
    assert listed["has_reference"] is True
    assert listed["verified_hosters"] == 2
    # A declared f16 that failed against an f16 reference is not believed: f16 goes to the verified ones only.
    with httpx.Client(base_url=stack.config.api_base, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=60) as client:  # fmt: skip
        for i in range(12):
            body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": f"Say hi {i}"}], "max_tokens": 8,
                    "provider": {"quantizations": ["fp16"]}}  # fmt: skip
            reply = client.post("/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-computeshare-hoster"] in trusted


def test_the_hoster_detail_shows_the_evidence_and_a_declared_quantization_not_confirmed(
    stack: Stack, caught: dict[str, int]
) -> None:
    async def detail(hoster_id: str) -> Any:
        nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-spot-checks", "test")))
        try:
            query = HosterDetailQuery(hoster_id=hoster_id).model_dump_json().encode()
            reply = await nc.request(subjects.SHOW_HOSTER, query, timeout=5)
        finally:
            await nc.close()
        found = HosterDetailReply.model_validate_json(reply.data).hoster
        assert found is not None
        [verification] = found.verifications
        return verification

    q4 = asyncio.run(detail(ids(stack)["q4"]))
    assert q4.verdict == "failed"
    assert q4.declared == "fp16"
    assert q4.confirmed is False
    assert q4.evidence
    assert not all(e.passed for e in q4.evidence)
    assert any(e.reference == ids(stack)["reference"] for e in q4.evidence)
    honest = asyncio.run(detail(ids(stack)["honest"]))
    assert honest.verdict == "verified"
    assert honest.confirmed is True
    assert honest.failures == 0
    # The operator's list says the same.
    listed = {h["id"]: h["verifications"] for h in stack.computeshare("hoster", "list")}
    assert listed[ids(stack)["q4"]] == {DEMO_MODEL: "failed"}
    assert listed[ids(stack)["honest"]] == {DEMO_MODEL: "verified"}
