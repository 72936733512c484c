"""OpenRouter's routing dialect through the router's choice: requests as clients write them, hosters as they
heartbeat, the candidates in the order the router would try them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from libs.contracts.hosters import HosterHeartbeat, HosterStatus, ModelOffer, RegisteredHoster
from libs.contracts.openai import ChatCompletionRequest
from libs.contracts.routing import RoutingPreferences
from services.router.service import HosterRegistry, NoEligibleHoster, RequestProfile, order_candidates
from services.router.stats import NetworkStats

CHEAP, CLOUD, FAST, SLOW = (f"22222222-2222-4222-8222-22222222222{i}" for i in range(4))
WALL = 1_700_000_000.0
PROFILE = RequestProfile(prompt_tokens=100, max_tokens=100)
FEE_BPS = 1000
MICRO = 1_000_000


def hoster(hoster_id: str, name: str, price: int, cloud: bool = False, quantization: str | None = None) -> HosterStatus:
    offer = ModelOffer(model="m", upstream_model="m", input_price=price, output_price=price, quantization=quantization)
    return HosterStatus(hoster_id=hoster_id, name=name, cloud=cloud, capacity=8, in_flight=0, models=[offer])


MARKET = [
    hoster(CHEAP, "Cheap-Box", 100_000, quantization="int4"),
    hoster(CLOUD, "cloud", 50_000, cloud=True, quantization="fp8"),
    hoster(FAST, "fast", 2 * MICRO, quantization="bf16"),
    hoster(SLOW, "slow", 1 * MICRO),
]
NAMES = {h.hoster_id: h.name for h in MARKET}


def registry() -> HosterRegistry:
    reg = HosterRegistry(ttl_s=3.0)
    reg.register([RegisteredHoster(hoster_id=h.hoster_id, name=h.name, cloud=h.cloud) for h in MARKET])
    reg.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=MARKET), 100.0, 1)
    return reg


def route(stats: NetworkStats | None = None, model: str = "m", **body: Any) -> list[str]:
    """The names of the hosters a request would be tried on, in order."""
    request = ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "x"}]} | body
    )
    candidates = order_candidates(
        registry(),
        stats or NetworkStats(),
        request.routed_model,
        request.routing(),
        PROFILE,
        101.0,
        WALL,
        5,
        set(),
        FEE_BPS,
    )
    return [NAMES[c.hoster.hoster_id] for c in candidates]


def refusal(**body: Any) -> str:
    with pytest.raises(NoEligibleHoster) as info:
        route(**body)
    assert info.value.report.http_status == 503
    return info.value.report.message


def measure(stats: NetworkStats, hoster_id: str, ttft_ms: float, tokens: int, duration_ms: float) -> None:
    for _ in range(5):
        stats.observe(
            hoster_id,
            WALL,
            model="m",
            outcome="succeeded",
            chunks_sent=tokens,
            ttft_ms=ttft_ms,
            completion_tokens=tokens,
            duration_ms=duration_ms,
            tokens_per_s=tokens * 1000 / (duration_ms - ttft_ms),
        )


def test_provider_order_puts_the_named_hosters_first_in_its_order_by_name_or_uuid() -> None:
    for _ in range(20):
        tried = route(provider={"order": ["FAST", CHEAP], "sort": "price"})
        assert tried[:2] == ["fast", "Cheap-Box"]
        assert tried[2:] == ["cloud", "slow"]  # the others follow, by price


def test_allow_fallbacks_false_tries_only_the_ordered_hosters_or_without_an_order_only_the_best() -> None:
    assert route(provider={"order": ["slow", "fast"], "allow_fallbacks": False}) == ["slow", "fast"]
    assert route(provider={"allow_fallbacks": False, "sort": "price"}) == ["cloud"]
    message = refusal(provider={"order": ["nobody"], "allow_fallbacks": False})
    assert "provider.order (with allow_fallbacks false) names no eligible hoster" in message
    assert len(route(provider={"order": ["nobody"]})) == 4  # with fallbacks, an unknown name only ranks nothing


def test_only_and_ignore_confine_by_name_case_insensitively_or_by_uuid() -> None:
    for _ in range(20):
        assert set(route(provider={"only": ["cheap-box", FAST]})) == {"Cheap-Box", "fast"}
        assert set(route(provider={"ignore": ["CLOUD", SLOW.upper()]})) == {"Cheap-Box", "fast"}
    assert "provider.only matches no eligible hoster" in refusal(provider={"only": ["nobody"]})
    assert "provider.ignore excludes every live hoster" in refusal(provider={"ignore": list(NAMES.values())})


def provider(**fields: Any) -> RoutingPreferences:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "provider": fields}
    ).routing()


def test_a_name_that_looks_like_a_uuid_only_ever_matches_that_hoster_id() -> None:
    impostor = HosterRegistry(ttl_s=3.0)
    impostor.register([RegisteredHoster(hoster_id=CHEAP, name=FAST)])  # another hoster's id as its name
    impostor.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=[hoster(CHEAP, FAST, 1)]), 100.0, 1)
    for ref in (FAST, FAST.upper(), "{" + FAST + "}", FAST.replace("-", "")):
        with pytest.raises(NoEligibleHoster):
            order_candidates(impostor, NetworkStats(), "m", provider(only=[ref]), PROFILE, 101.0, WALL, 5)


def test_a_hoster_known_only_from_its_heartbeat_is_never_matched_by_the_name_it_claims() -> None:
    # `acme` registered; a stranger the router has no registration for (billing was down, say) heartbeats
    # under the name "ACME". provider.only ["acme"] reaches the registered one alone, whatever the case.
    acme, stranger = "33333333-3333-4333-8333-333333333331", "33333333-3333-4333-8333-333333333332"
    reg = HosterRegistry(ttl_s=3.0)
    reg.register([RegisteredHoster(hoster_id=acme, name="acme")])
    beat = [hoster(acme, "whatever-it-says", MICRO), hoster(stranger, "ACME", 1)]
    reg.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=beat), 100.0, 1)

    def tried(**fields: Any) -> list[str]:
        chosen = order_candidates(reg, NetworkStats(), "m", provider(**fields), PROFILE, 101.0, WALL, 5)
        return [c.hoster.hoster_id for c in chosen]

    for _ in range(10):
        assert tried(only=["acme"]) == [acme]
        assert tried(only=["ACME"], sort="price") == [acme]
        assert tried(ignore=["Acme"]) == [stranger]  # ignoring the name never drops the one that only claims it
        assert tried(order=["acme"], sort="price") == [acme, stranger]  # the stranger is cheaper
        assert tried(only=[stranger]) == [stranger]  # by its UUID it can still be named
    # With no registration at all, no hoster passes for a name, whatever its heartbeat says.
    alone = HosterRegistry(ttl_s=3.0)
    alone.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=[hoster(stranger, "acme", 1)]), 100.0, 1)
    with pytest.raises(NoEligibleHoster) as info:
        order_candidates(alone, NetworkStats(), "m", provider(only=["acme"]), PROFILE, 101.0, WALL, 5)
    assert "provider.only matches no eligible hoster" in info.value.report.message


def test_a_registration_that_arrives_after_the_heartbeat_names_the_hoster_at_once() -> None:
    acme = "33333333-3333-4333-8333-333333333331"
    reg = HosterRegistry(ttl_s=3.0)
    reg.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=[hoster(acme, "acme", 1)]), 100.0, 1)
    reg.register([RegisteredHoster(hoster_id=acme, name="Acme-Labs")])
    chosen = order_candidates(reg, NetworkStats(), "m", provider(only=["acme-labs"]), PROFILE, 101.0, WALL, 5)
    assert [c.hoster.hoster_id for c in chosen] == [acme]
    with pytest.raises(NoEligibleHoster):
        order_candidates(reg, NetworkStats(), "m", provider(only=["acme"]), PROFILE, 101.0, WALL, 5)


@pytest.mark.parametrize("how", [{"provider": {"sort": "price"}}, {"model": "m:floor"}])
def test_sort_price_and_floor_always_pick_the_cheapest(how: dict[str, Any]) -> None:
    for _ in range(20):
        assert route(**how) == ["cloud", "Cheap-Box", "slow", "fast"]


@pytest.mark.parametrize("how", [{"provider": {"sort": "throughput"}}, {"model": "m:nitro"}])
def test_sort_throughput_and_nitro_pick_the_most_tokens_per_second(how: dict[str, Any]) -> None:
    stats = NetworkStats()
    measure(stats, FAST, ttft_ms=300, tokens=200, duration_ms=1300)  # 200 tokens/s, slow to start
    measure(stats, CHEAP, ttft_ms=20, tokens=20, duration_ms=1020)  # 20 tokens/s
    measure(stats, CLOUD, ttft_ms=20, tokens=40, duration_ms=1020)
    measure(stats, SLOW, ttft_ms=20, tokens=10, duration_ms=1020)
    for _ in range(20):
        assert route(stats, **how) == ["fast", "cloud", "Cheap-Box", "slow"]


def test_sort_latency_picks_the_quickest_first_token() -> None:
    stats = NetworkStats()
    measure(stats, FAST, ttft_ms=900, tokens=200, duration_ms=1900)
    for hoster_id, ttft in ((CHEAP, 400.0), (CLOUD, 40.0), (SLOW, 600.0)):
        measure(stats, hoster_id, ttft_ms=ttft, tokens=10, duration_ms=ttft + 1000)
    assert route(stats, provider={"sort": "latency"})[0] == "cloud"


def test_max_price_excludes_hosters_dearer_than_it_the_platform_fee_included() -> None:
    # Cheap-Box lists 0.10 per million and costs the client 0.11 with the 10% fee.
    assert set(route(provider={"max_price": {"prompt": "0.11", "completion": 0.11}})) == {"cloud", "Cheap-Box"}
    assert route(provider={"max_price": {"prompt": "0.10"}}) == ["cloud"]
    assert set(route(provider={"max_price": {"completion": 1.1}})) == {"cloud", "Cheap-Box", "slow"}
    assert len(route(provider={"max_price": {"request": 0}})) == 4  # nobody charges per request
    assert "provider.max_price" in refusal(provider={"max_price": {"prompt": "0.01"}})


def test_data_collection_deny_keeps_cloud_hosters_out() -> None:
    for _ in range(20):
        assert "cloud" not in route(provider={"data_collection": "deny"})
    assert len(route(provider={"data_collection": "allow"})) == 4
    message = refusal(provider={"data_collection": "deny", "only": ["cloud"]})
    assert message.endswith("provider.only matches no eligible hoster (after provider.data_collection)")


def test_quantizations_go_only_to_hosters_that_declared_one_of_them() -> None:
    assert route(provider={"quantizations": ["bf16"]}) == ["fast"]
    assert set(route(provider={"quantizations": ["int4", "fp8"]})) == {"Cheap-Box", "cloud"}
    assert route(provider={"quantizations": ["unknown"]}) == ["slow"]  # declared none
    assert "provider.quantizations: no hoster declared fp4 or fp6" in refusal(
        provider={"quantizations": ["fp4", "fp6"]}
    )


def test_models_fail_over_to_the_next_model_in_order() -> None:
    assert route(model="never-served:floor", models=["m"]) == ["cloud", "Cheap-Box", "slow", "fast"]


def test_our_dialect_and_openrouters_combine_every_filter_applying() -> None:
    tried = Counter(
        tuple(route(provider={"only": ["fast", "slow", "cloud"], "order": ["slow"]}, privacy_mode=True))
        for _ in range(20)
    )
    assert set(tried) == {("slow", "fast")}
    # A hoster must be in allow_hosters and in provider.only, in neither deny_hosters nor provider.ignore.
    assert route(allow_hosters=[CHEAP, FAST, SLOW], provider={"only": ["fast", "cloud", "slow"], "sort": "price"}) == [
        "slow",
        "fast",
    ]
    assert route(deny_hosters=[CHEAP], provider={"ignore": ["slow"], "sort": "price"}) == ["cloud", "fast"]
    message = refusal(allow_hosters=[CHEAP], provider={"only": ["fast"]})
    assert message.endswith("provider.only matches no eligible hoster (after allow_hosters)")
