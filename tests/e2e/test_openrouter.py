"""OpenRouter's routing dialect through the whole stack: the ``provider`` object, ``models`` and the ``:floor``
/ ``:nitro`` suffixes choose the hoster that serves, over several simulated hosters of different price,
speed, kind (cloud or community) and quantization."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from libs.devstack.processes import free_port
from libs.devstack.stack import AdapterSpec, SimulatorSpec, Stack, throwaway_config
from tests.e2e.records import routing_record

pytestmark = pytest.mark.e2e

CHEAP, CLOUD, FAST = (f"bbbbbbbb-0000-4000-8000-00000000000{i}" for i in range(1, 4))
BROKEN_PAIR, STEADY, BROKEN_LONE = (f"bbbbbbbb-0000-4000-8000-00000000001{i}" for i in range(1, 4))
NAMES = {
    CHEAP: "cheap",
    CLOUD: "cloud",
    FAST: "fast",
    BROKEN_PAIR: "broken-pair",
    STEADY: "steady",
    BROKEN_LONE: "broken-lone",
}


def hoster(
    hoster_id: str,
    sim: SimulatorSpec,
    model: str,
    price: str,
    cloud: bool = False,
    quantization: str | None = None,
    advertised_ttft_ms: float = 400,
) -> dict[str, Any]:
    offer = {"name": model, "upstream_model": "demo-model", "input_price": price, "output_price": price}
    return {
        "id": hoster_id,
        "name": NAMES[hoster_id],
        "base_url": sim.base_url,
        "cloud": cloud,
        "capacity": 64,
        "advertised_ttft_ms": advertised_ttft_ms,
        "models": [offer | ({"quantization": quantization} if quantization else {})],
    }


@pytest.fixture(scope="module")
def market() -> Iterator[Stack]:
    # `fast` answers at once; `cheap` and `cloud` wait 80 ms and then stream 100 tokens a second.
    fast = SimulatorSpec("sim-fast", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "8"})
    slow = SimulatorSpec(
        "sim-slow",
        free_port(),
        {"CS_SIMULATOR_REPLY_TOKENS": "8", "CS_SIMULATOR_TTFT_MS": "80", "CS_SIMULATOR_TOKENS_PER_SECOND": "100"},
    )
    broken = SimulatorSpec("sim-broken", free_port(), {"CS_SIMULATOR_FAULT": "error", "CS_SIMULATOR_FAULT_RATE": "1"})
    hosters = [
        hoster(CHEAP, slow, "m", "0.10", quantization="int4"),
        hoster(CLOUD, slow, "m", "0.05", cloud=True, quantization="fp8"),
        hoster(FAST, fast, "m", "2.00", quantization="bf16", advertised_ttft_ms=10),
        # `pair`: the cheapest of its two hosters always fails; `lonely` has only a failing one.
        hoster(BROKEN_PAIR, broken, "pair", "0.01"),
        hoster(STEADY, fast, "pair", "1.00"),
        hoster(BROKEN_LONE, broken, "lonely", "0.01"),
    ]
    config = throwaway_config(
        simulators=[fast, slow, broken],
        adapters=[AdapterSpec("adapter", hosters, {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"})],
        # Simulated models answer as fast as the machine goes: no speed is implausible for them.
        service_env={
            "CS_ROUTER_HOSTER_TTL_S": "2",
            "CS_INGRESS_IDLE_TIMEOUT_S": "10",
            "CS_ROUTER_MAX_TOKENS_PER_S": "1e9",
        },
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(market: Stack) -> str:
    return market.create_account(credits="1000")[1]


def post(market: Stack, key: str, **body: Any) -> httpx.Response:
    payload = {"model": "m", "messages": [{"role": "user", "content": "route me"}], "max_tokens": 8, **body}
    return httpx.post(
        f"{market.config.api_base}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def served_by(market: Stack, key: str, **body: Any) -> str:
    """The name of the hoster that served the request (it must succeed)."""
    response = post(market, key, **body)
    assert response.status_code == 200, response.text
    return NAMES[response.headers["x-computeshare-hoster"]]


def who(market: Stack, key: str, times: int = 8, **body: Any) -> Counter[str]:
    return Counter(served_by(market, key, **body) for _ in range(times))


@pytest.fixture(scope="module")
def measured(market: Stack, key: str) -> None:
    """Every hoster of `m` has served enough for routing to use its observed speed."""
    for _ in range(6):
        for hoster_id in (CHEAP, CLOUD, FAST):
            assert served_by(market, key, provider={"only": [hoster_id]}) == NAMES[hoster_id]


def test_provider_order_puts_the_named_hoster_first(market: Stack, key: str) -> None:
    # Without an order, the cheapest serves; the order overrides it, by UUID (any case). These hosters are
    # the platform's, known to the router from heartbeats alone: with no registration they have no name a
    # client can pick them by (unit tests cover registered names), so naming one only ranks nothing.
    assert who(market, key, provider={"sort": "price"}) == {"cloud": 8}
    assert who(market, key, provider={"sort": "price", "order": [FAST.upper(), CHEAP]}) == {"fast": 8}
    assert who(market, key, provider={"order": [CHEAP, FAST]}) == {"cheap": 8}
    assert who(market, key, provider={"sort": "price", "order": ["fast"]}) == {"cloud": 8}


def test_only_and_ignore_confine_the_choice(market: Stack, key: str) -> None:
    assert set(who(market, key, provider={"only": [CHEAP, FAST]})) <= {"cheap", "fast"}
    assert who(market, key, provider={"ignore": [CLOUD, FAST.upper()]}) == {"cheap": 8}
    for unknown in ("nobody", "cheap"):  # `cheap` is only what an unregistered hoster's heartbeat says
        nobody = post(market, key, provider={"only": [unknown]})
        assert nobody.status_code == 503
        assert "provider.only matches no eligible hoster" in nobody.json()["error"]["message"]


def test_sort_price_and_floor_pick_the_cheapest(market: Stack, key: str) -> None:
    assert who(market, key, provider={"sort": "price"}) == {"cloud": 8}
    floor = post(market, key, model="m:floor")
    assert floor.status_code == 200, floor.text
    assert NAMES[floor.headers["x-computeshare-hoster"]] == "cloud"
    assert floor.json()["model"] == "m"  # the model that served, without the routing suffix


def test_nitro_and_sort_latency_pick_the_fastest(market: Stack, key: str, measured: None) -> None:
    nitro = post(market, key, model="m:nitro")
    assert nitro.status_code == 200, nitro.text
    assert (NAMES[nitro.headers["x-computeshare-hoster"]], nitro.json()["model"]) == ("fast", "m")
    assert who(market, key, model="m:nitro") == {"fast": 8}
    assert who(market, key, provider={"sort": "throughput"}) == {"fast": 8}
    assert who(market, key, provider={"sort": "latency"}) == {"fast": 8}


def test_max_price_excludes_dearer_hosters_and_refuses_when_none_is_left(market: Stack, key: str) -> None:
    # `cheap` lists 0.10 per million tokens and costs 0.11 with the 10% platform fee; `cloud` costs 0.055.
    assert set(who(market, key, provider={"max_price": {"prompt": 1, "completion": "1"}})) <= {"cheap", "cloud"}
    assert who(market, key, provider={"max_price": {"prompt": 0.11}, "data_collection": "deny"}) == {"cheap": 8}
    assert who(market, key, provider={"max_price": {"prompt": "0.10", "completion": "0.10"}}) == {"cloud": 8}
    none_left = post(market, key, provider={"max_price": {"prompt": "0.01", "completion": "0.01"}})
    assert none_left.status_code == 503
    error = none_left.json()["error"]
    assert error["code"] == "no_hoster_available"
    assert "provider.max_price: every hoster costs more (the platform fee included)" in error["message"]
    assert int(none_left.headers["retry-after"]) >= 1


def test_data_collection_deny_keeps_cloud_hosters_out(market: Stack, key: str) -> None:
    # `cloud` is the cheapest, so only the rule keeps it out.
    assert who(market, key, provider={"sort": "price", "data_collection": "deny"}) == {"cheap": 8}
    refused = post(market, key, provider={"data_collection": "deny", "only": [CLOUD]})
    assert refused.status_code == 503
    assert "(after provider.data_collection)" in refused.json()["error"]["message"]


def test_quantizations_go_only_to_hosters_that_declared_one_of_them(market: Stack, key: str) -> None:
    assert who(market, key, provider={"quantizations": ["bf16"]}) == {"fast": 8}
    assert who(market, key, provider={"quantizations": ["int4", "fp8"], "sort": "price"}) == {"cloud": 8}
    unknown = post(market, key, provider={"quantizations": ["fp4"]})
    assert unknown.status_code == 503
    assert "provider.quantizations: no hoster declared fp4" in unknown.json()["error"]["message"]


def test_models_fail_over_to_the_next_model(market: Stack, key: str) -> None:
    response = post(market, key, model="lonely", models=["lonely", "m"], provider={"sort": "price"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "m"
    attempts = routing_record(market, key, response.json()["id"])["attempts"]
    assert [(NAMES[a["hoster_id"]], a["outcome"]) for a in attempts] == [
        ("broken-lone", "failed"),
        ("cloud", "succeeded"),
    ]


def test_allow_fallbacks_false_fails_rather_than_leave_the_ordered_hosters(market: Stack, key: str) -> None:
    confined = post(market, key, model="pair", provider={"order": [BROKEN_PAIR], "allow_fallbacks": False})
    assert confined.status_code == 500
    assert confined.json()["error"]["code"] == "all_hosters_failed"
    assert confined.headers["x-computeshare-hoster"] == BROKEN_PAIR
    assert confined.headers["x-computeshare-attempts"] == "1"
    # The same order with fallbacks allowed: the other hoster answers after the ordered one failed.
    response = post(market, key, model="pair", provider={"order": [BROKEN_PAIR]})
    assert response.status_code == 200, response.text
    attempts = routing_record(market, key, response.json()["id"])["attempts"]
    assert [NAMES[a["hoster_id"]] for a in attempts] == ["broken-pair", "steady"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"provider": {"zdr": True}}, "provider.zdr", "unsupported_parameter"),
        ({"provider": {"preferred_min_throughput": 100}}, "provider.preferred_min_throughput", "unsupported_parameter"),
        ({"provider": {"max_price": {"image": 1}}}, "provider.max_price.image", "unsupported_parameter"),
        ({"provider": {"sort": "price"}, "tier": "fastest"}, "provider.sort", "conflicting_parameters"),
        ({"model": "m:nitro", "tier": "cheapest"}, "model", "conflicting_parameters"),
    ],
)
def test_a_provider_field_we_cannot_honour_or_a_conflict_is_a_400_naming_it(
    market: Stack, key: str, body: dict[str, Any], param: str, code: str
) -> None:
    response = post(market, key, **body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert f"'{param}'" in error["message"]


def test_the_openai_sdk_sends_the_dialect_in_extra_body(market: Stack, key: str) -> None:
    sdk = openai.OpenAI(base_url=market.config.api_base, api_key=key, max_retries=0, timeout=30)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "x"}]
    raw = sdk.chat.completions.with_raw_response.create(
        model="m",
        messages=messages,
        max_tokens=4,
        extra_body={"provider": {"order": [CHEAP], "allow_fallbacks": False, "require_parameters": True}},
    )
    completion = raw.parse()
    assert NAMES[raw.headers["x-computeshare-hoster"]] == "cheap"
    assert completion.model == "m"
    assert completion.choices[0].message.content
    stream = sdk.chat.completions.with_raw_response.create(
        model="m:floor", messages=messages, stream=True, extra_body={"provider": {"data_collection": "deny"}}
    )
    chunks = list(stream.parse())
    assert NAMES[stream.headers["x-computeshare-hoster"]] == "cheap"
    assert {c.model for c in chunks} == {"m"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="m", messages=messages, extra_body={"provider": {"zdr": True}})
    assert refused.value.param == "provider.zdr"
