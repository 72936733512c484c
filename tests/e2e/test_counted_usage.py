"""The network counts the tokens of a registered model with the model's own tokenizer (billing's registry,
``computeshare model register``): a real llama.cpp hoster behind the real adapter is billed on our count of
its prompt and of the text the client received, the lower of its claim and our count; a hoster that claims
more than it delivered is billed our count and flagged; and reservations come from the count, so credit that
covers a request's real maximum admits it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.contracts.common import Usage
from libs.contracts.hosters import LiveHosters
from libs.contracts.pricing import COUNT_TOLERANCE
from libs.contracts.routing import AttemptDispatch
from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, AdapterSpec, Stack, llamacpp_hoster, throwaway_config
from libs.devstack.tinymodel import TinyModel, tiny_model
from libs.tokens import TokenizerFiles, count_chat_prompt, count_completion, load_model_tokenizer
from tests.e2e.records import routing_record
from tests.e2e.test_money import settled
from tests.integration.request_path.scripted_hoster import Script, ScriptedHoster
from tests.waits import until_stack_hoster, until_stack_router_hears

pytestmark = pytest.mark.e2e

SEED = 0
# The tiny model's plausibility bound on a hoster's speed: llama.cpp computes it at a few thousand tokens per
# second on this CPU (an unstreamed answer; a stream is slower, the server's Python sends each token), so
# the default bound of real models (5,000) would flag the honest engine; ten times what it runs at.
TINY_MAX_TOKENS_PER_S = 30_000
QUESTION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Please summarise the plot of Hamlet, the ghost, the play and the final duel."},
]


@pytest.fixture(scope="module")
def model() -> TinyModel:
    return tiny_model(SEED)


@pytest.fixture(scope="module")
def stack(model: TinyModel) -> Iterator[Stack]:
    engine, hoster = llamacpp_hoster(seed=SEED, capacity=4)  # the engine queues what it cannot compute at once;
    # capacity 1 made a request sent right after another's answer look "at capacity" until the next heartbeat
    config = throwaway_config(
        engines=[engine],
        adapters=[AdapterSpec("hoster_adapter", [hoster], {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"})],
        service_env={"CS_ROUTER_HOSTER_TTL_S": "2", "CS_INGRESS_IDLE_TIMEOUT_S": "10"},
    )
    running = Stack(config).start()
    registered = running.computeshare(
        "model", "register", DEMO_MODEL,
        "--tokenizer", str(model.tokenizer_json), "--tokenizer-config", str(model.tokenizer_config),
        "--max-tokens-per-s", str(TINY_MAX_TOKENS_PER_S),
    )  # fmt: skip
    assert registered["model"] == DEMO_MODEL
    yield running
    running.stop()


def counter(model: TinyModel) -> Any:
    return load_model_tokenizer(TokenizerFiles(model.tokenizer_json.read_bytes(), model.tokenizer_config.read_bytes()))


async def post(stack: Stack, key: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            f"{stack.config.api_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body
        )


async def test_an_honest_engine_is_billed_our_count_streamed_or_not(stack: Stack, model: TinyModel) -> None:
    account_id, key = stack.create_account(credits="100")
    ours = counter(model)
    prompt = count_chat_prompt(ours, {"messages": QUESTION})
    for stream in (False, True):
        body: dict[str, Any] = {"model": DEMO_MODEL, "messages": QUESTION, "max_tokens": 12, "seed": 1}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        response = await post(stack, key, **body)
        assert response.status_code == 200, response.text
        if stream:
            events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
            text = "".join((e["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events)
            finish = next(e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]
                          .get("finish_reason"))  # fmt: skip
            usage = events[-1]["usage"]
            request_id = events[0]["id"]
        else:
            answer = response.json()
            text, finish, usage = answer["choices"][0]["message"]["content"], answer["choices"][0]["finish_reason"], \
                answer["usage"]  # fmt: skip
            request_id = answer["id"]
        completion = count_completion(ours, [text]) - (0 if finish == "stop" else 1)
        # What the client sees is what it is billed: our counts (the engine reports none on a stream).
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion), (stream, usage)
        assert "estimated" not in usage
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, request_id)
        assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
        assert record["usage_discrepancy"] is None, record
        assert record["usage_verified"] is True, record
        [attempt] = record["attempts"]
        # The engine's own claim (unstreamed) agrees with our count within the tolerance.
        if not stream:
            assert abs(attempt["prompt_tokens"] - prompt) <= COUNT_TOLERANCE
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


@contextlib.asynccontextmanager
async def liar(stack: Stack, tmp_path: Path, script: Script) -> AsyncIterator[ScriptedHoster]:
    hoster = await ScriptedHoster.connect(stack.nats_url, stack.auth, tmp_path, DEMO_MODEL, script, price=1)
    try:
        await until_stack_router_hears(stack, hoster.hoster_id)
        yield hoster
    finally:
        await hoster.close()


@pytest.mark.parametrize("factor", [1.5, 4])
async def test_a_hoster_claiming_more_than_it_delivered_is_billed_our_count_and_flagged(
    stack: Stack, model: TinyModel, tmp_path: Path, factor: float
) -> None:
    account_id, key = stack.create_account(credits="100")
    ours = counter(model)
    content = "The prince avenges his father and everyone dies in the duel."
    prompt, completion = count_chat_prompt(ours, {"messages": QUESTION}), count_completion(ours, [content])
    claim = Usage(prompt_tokens=int(prompt * factor) + 10, completion_tokens=int(completion * factor) + 10)

    async def inflate(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.answer(dispatch, msg.reply, content, claim)
        await hoster.report(dispatch, "succeeded", claim, chunks_sent=1)

    async with liar(stack, tmp_path, inflate) as hoster:
        response = await post(stack, key, model=DEMO_MODEL, messages=QUESTION, max_tokens=64, tier="cheapest")
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-hoster"] == hoster.hoster_id
        usage = response.json()["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion)
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
        assert "the network counted" in (record["usage_discrepancy"] or ""), record
        assert record["usage_verified"] is True, record  # billed our count, not its claim
        nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-counted", "test")))
        try:
            reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=5)
        finally:
            await nc.close()
        [seen] = [h for h in LiveHosters.model_validate_json(reply.data).hosters if h.hoster_id == hoster.hoster_id]
        assert seen.usage_discrepancies == 1
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


async def test_credit_for_the_real_maximum_admits_the_request(stack: Stack, model: TinyModel) -> None:
    """Reserved on our prompt count, not on the body's bytes + 64: an account with just enough for the counted
    prompt and ``max_tokens`` at the hoster's price is admitted (with the byte bound it was refused 402)."""
    ours = counter(model)
    messages = [{"role": "user", "content": "the " * 200}]  # 800 bytes, far fewer tokens
    prompt = count_chat_prompt(ours, {"messages": messages})
    assert prompt * 2 < 800
    # The demo hoster's prices (0.50 / 1.50 per million), 10% fee: the counted maximum, and half the byte one.
    counted_max = (prompt + 4) * 0.5 + 16 * 1.5
    byte_max = (len(json.dumps({"model": DEMO_MODEL, "messages": messages, "max_tokens": 16})) + 64) * 0.5 + 16 * 1.5
    credits = (counted_max * 1.1 + 2) / 1e6
    assert credits < byte_max * 1.1 / 1e6
    account_id, key = stack.create_account(credits=f"{credits:.6f}")
    # The llama.cpp hoster alone (a scripted hoster of an earlier test may still be listed for a moment).
    response = await post(
        stack, key, model=DEMO_MODEL, messages=messages, max_tokens=16, allow_hosters=[DEMO_HOSTER_ID]
    )
    assert response.status_code == 200, response.text
    await settled(stack, account_id)


async def test_the_models_list_says_whose_usage_is_verified(stack: Stack) -> None:
    """A registered model is listed ``usage_verified``; the registry's answer is believed for a few seconds."""
    async with httpx.AsyncClient(timeout=30) as http:
        listing = (await http.get(f"{stack.config.api_base}/models")).json()
        one = (await http.get(f"{stack.config.api_base}/models/{DEMO_MODEL}")).json()
    assert [m["usage_verified"] for m in listing["data"] if m["id"] == DEMO_MODEL] == [True]
    assert one["usage_verified"] is True


async def test_a_hoster_faster_than_its_models_bound_is_flagged_and_not_ranked_first_by_fastest(
    stack: Stack, model: TinyModel, tmp_path: Path
) -> None:
    """A mock that answers thousands of tokens at once, past the tiny model's bound even if the box made it
    wait 100 ms: flagged, its timing not used, and ``tier: fastest`` goes to the honest engine. A hoster that
    claims tokens it never sent gains no speed from them: the speed is our count over our clock."""
    _, key = stack.create_account(credits="100")
    ours = counter(model)
    words = "the sea and the ship sail on the grey water while the wind "
    content = words * 400
    assert count_completion(ours, [content]) > TINY_MAX_TOKENS_PER_S * 0.1  # more than the bound in 100 ms
    honest_claim = Usage(prompt_tokens=40, completion_tokens=count_completion(ours, [content]))

    async def instant(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.answer(dispatch, msg.reply, content, honest_claim)
        await hoster.report(dispatch, "succeeded", honest_claim, chunks_sent=1)

    async with liar(stack, tmp_path, instant) as hoster:
        body = {"model": DEMO_MODEL, "messages": QUESTION, "max_tokens": 8000}
        response = await post(stack, key, **body, allow_hosters=[hoster.hoster_id])
        assert response.status_code == 200, response.text
        flagged = await until_stack_hoster(stack, hoster.hoster_id, lambda h: h.implausible_speeds >= 1)
        assert flagged.tokens_per_s is None  # no speed of it is believed
        for _ in range(5):
            fastest = await post(stack, key, model=DEMO_MODEL, messages=QUESTION, max_tokens=4, tier="fastest")
            assert fastest.status_code == 200, fastest.text
            assert fastest.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID

    short = "The prince dies."
    inflated = Usage(prompt_tokens=40, completion_tokens=4000)

    async def claims(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.answer(dispatch, msg.reply, short + " " + words * 2, inflated)
        await hoster.report(dispatch, "succeeded", inflated, chunks_sent=1)

    async with liar(stack, tmp_path / "claims", claims) as claimer:
        response = await post(stack, key, model=DEMO_MODEL, messages=QUESTION, max_tokens=4000,
                              allow_hosters=[claimer.hoster_id])  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] < 100  # our count, not 4000
        seen = await until_stack_hoster(stack, claimer.hoster_id, lambda h: h.usage_discrepancies >= 1)
        assert seen.tokens_per_s is None or seen.tokens_per_s <= TINY_MAX_TOKENS_PER_S
