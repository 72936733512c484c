"""OpenRouter's routing dialect as the ingress reads it: what each field maps to, and what it refuses."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from libs.contracts.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ValidationFailure,
    hoster_body,
    validation_failure,
)
from libs.contracts.openrouter import CONFLICTS

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HOSTER = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"
# The OpenAPI document's body schema: the conflicts are in it too, so a schema-valid body is never refused.
SCHEMA = jsonschema.Draft202012Validator(ChatCompletionRequest.model_json_schema())


def accepted(**body: Any) -> ChatCompletionRequest:
    payload = BASE | body
    assert SCHEMA.is_valid(payload)
    return ChatCompletionRequest.model_validate(payload)


def refused(**body: Any) -> ValidationFailure:
    payload = BASE | body
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(payload)
    return validation_failure(payload, info.value.errors(include_url=False))


def test_each_provider_field_maps_onto_the_routers_preferences() -> None:
    request = accepted(
        provider={
            "order": ["Fast-Box", HOSTER.upper()],
            "allow_fallbacks": False,
            "only": ["fast-box", "cheap"],
            "ignore": ["cloud"],
            "sort": "price",
            "max_price": {"prompt": "0.1", "completion": 2, "request": 0},
            "require_parameters": True,
            "data_collection": "deny",
            "quantizations": ["bf16", "fp8"],
            "zdr": False,
            "enforce_distillable_text": None,
        }
    )
    prefs = request.routing()
    assert prefs.order_hosters == ["Fast-Box", HOSTER]  # UUIDs in canonical form, names as given
    assert prefs.allow_fallbacks is False
    assert prefs.only_hosters == ["fast-box", "cheap"]
    assert prefs.ignore_hosters == ["cloud"]
    assert prefs.tier == "cheapest"
    assert (prefs.max_input_price, prefs.max_output_price) == (100_000, 2_000_000)  # micro-credits per million
    assert prefs.require_parameters is True
    assert prefs.privacy_mode is True
    assert prefs.quantizations == ["bf16", "fp8"]
    # A request no hoster can serve is refused in the client's own words.
    assert prefs.label("privacy_mode") == 'provider.data_collection "deny"'
    assert prefs.label("require_parameters") == "provider.require_parameters"
    assert prefs.label("trusted_only") == "trusted_only"


@pytest.mark.parametrize(
    ("sort", "tier"), [("price", "cheapest"), ("latency", "fastest"), ("throughput", "throughput")]
)
def test_provider_sort_ranks_as_a_tier(sort: str, tier: str) -> None:
    assert accepted(provider={"sort": sort}).routing().tier == tier


def test_data_collection_allow_is_the_default_and_ours_still_work_alongside() -> None:
    request = accepted(provider={"data_collection": "allow", "only": ["cheap"]}, tier="fastest", trusted_only=True)
    prefs = request.routing()
    assert (prefs.privacy_mode, prefs.tier, prefs.trusted_only, prefs.only_hosters) == (
        False,
        "fastest",
        True,
        ["cheap"],
    )


def test_filters_from_both_dialects_all_apply() -> None:
    prefs = accepted(
        allow_hosters=[HOSTER],
        deny_hosters=[HOSTER],
        privacy_mode=False,
        require_parameters=True,
        provider={"only": ["cheap"], "ignore": ["cloud"], "data_collection": "deny", "require_parameters": False},
    ).routing()
    assert (prefs.allow_hosters, prefs.only_hosters) == ([HOSTER], ["cheap"])  # a hoster must be in both
    assert (prefs.deny_hosters, prefs.ignore_hosters) == ([HOSTER], ["cloud"])  # and in neither
    assert prefs.privacy_mode is True  # either asks: no cloud hoster
    assert prefs.require_parameters is True  # `false` asks for nothing: ours still requires them
    # Asked by ours, the refusal names ours.
    assert accepted(privacy_mode=True, provider={"data_collection": "deny"}).routing().label("privacy_mode") == (
        "privacy_mode"
    )


def test_fallback_lists_add_up_openrouters_first() -> None:
    prefs = accepted(models=["m", "x", "y"], fallback_models=["y", "z", "m"]).routing()
    assert prefs.fallback_models == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("model", "routed", "tier"), [("m:floor", "m", "cheapest"), ("auto:nitro", "auto", "throughput")]
)
def test_the_floor_and_nitro_suffixes_rank_and_are_removed_before_routing(model: str, routed: str, tier: str) -> None:
    request = accepted(model=model)
    assert (request.routed_model, request.routing().tier) == (routed, tier)


def test_a_model_named_like_a_suffix_alone_is_a_model_name() -> None:
    request = accepted(model=":floor")
    assert (request.routed_model, request.routing().tier) == (":floor", "balanced")


def test_models_are_the_fallbacks_after_model_in_order() -> None:
    # Both OpenRouter styles: `models` listing the primary first, or only the fallbacks.
    assert accepted(models=["m", "b", "a", "b"]).routing().fallback_models == ["b", "a"]
    assert accepted(model="m:floor", models=["x", "m"]).routing().fallback_models == ["x"]
    assert accepted(models=["x"], route="fallback").routing().fallback_models == ["x"]


def test_a_suffix_on_a_fallback_model_is_refused_it_ranks_the_whole_request() -> None:
    failure = refused(models=["x:nitro"])
    assert failure.param == "models[0]"
    assert ":floor or :nitro" in failure.message


def test_the_hoster_never_sees_either_dialects_routing_fields() -> None:
    payload = BASE | {
        "provider": {"only": ["cheap"]},
        "models": ["x"],
        "route": "fallback",
        "trusted_only": True,
        "top_k": 3,
        "transforms": ["middle-out"],
    }
    ChatCompletionRequest.model_validate(payload)
    assert hoster_body(payload) == BASE | {"top_k": 3, "transforms": ["middle-out"]}


CONFLICTING_BODIES: list[tuple[dict[str, Any], str, str]] = [
    ({"tier": "cheapest", "provider": {"sort": "price"}}, "tier", "provider.sort"),
    ({"tier": "balanced", "model": "m:nitro"}, "tier", "model"),
    ({"provider": {"sort": "latency"}, "model": "m:floor"}, "provider.sort", "model"),
]


def test_every_conflict_rule_is_tested() -> None:
    assert set(CONFLICTS) == {(o, t) for _, o, t in CONFLICTING_BODIES}


@pytest.mark.parametrize(("body", "ours", "theirs"), CONFLICTING_BODIES)
def test_two_rankings_are_a_400_naming_both_whatever_the_values(body: dict[str, Any], ours: str, theirs: str) -> None:
    failure = refused(**body)
    assert failure.param == theirs
    assert failure.code == "conflicting_parameters"
    assert f"'{ours}'" in failure.message or ours == "model"
    assert f"'{theirs}'" in failure.message or theirs == "model"
    # The OpenAPI document says so too (schemathesis holds the gateway to it).
    assert not SCHEMA.is_valid(BASE | body)


def test_a_field_given_as_null_is_given_as_the_openapi_rules_read_it() -> None:
    assert refused(tier="fastest", provider={"sort": None}).param == "provider.sort"
    assert accepted(tier="fastest", provider={"only": None}).routing().tier == "fastest"


@pytest.mark.parametrize(
    ("provider", "param"),
    [
        ({"zdr": True}, "provider.zdr"),
        ({"enforce_distillable_text": True}, "provider.enforce_distillable_text"),
        ({"preferred_max_latency": 1}, "provider.preferred_max_latency"),
        ({"partition": "none"}, "provider.partition"),
        ({"max_price": {"image": 1}}, "provider.max_price.image"),
        ({"max_price": {"audio": "1"}}, "provider.max_price.audio"),
    ],
)
def test_a_provider_field_we_cannot_honour_is_a_400_naming_it(provider: dict[str, Any], param: str) -> None:
    failure = refused(provider=provider)
    assert failure.param == param
    assert failure.code == "unsupported_parameter"
    assert param in failure.message
    assert not SCHEMA.is_valid(BASE | {"provider": provider})


@pytest.mark.parametrize(
    ("provider", "param"),
    [
        ({"sort": "quality"}, "provider.sort"),
        ({"sort": {"by": "price"}}, "provider.sort"),
        ({"quantizations": ["int3"]}, "provider.quantizations[0]"),
        ({"data_collection": "sometimes"}, "provider.data_collection"),
        ({"max_price": {"prompt": "cheap"}}, "provider.max_price.prompt"),
        ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
        ({"max_price": {"completion": "NaN"}}, "provider.max_price.completion"),
        ({"max_price": {"completion": "1e3"}}, "provider.max_price.completion"),
        ({"max_price": {"prompt": 10_000_000}}, "provider.max_price.prompt"),
        ({"max_price": {"prompt": True}}, "provider.max_price.prompt"),
        ({"order": [""]}, "provider.order[0]"),
        ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ],
)
def test_a_malformed_provider_value_is_a_400_naming_it(provider: dict[str, Any], param: str) -> None:
    assert refused(provider=provider).param == param
    assert not SCHEMA.is_valid(BASE | {"provider": provider})


def test_max_price_takes_numbers_and_decimal_strings_rounding_down_to_the_micro_credit() -> None:
    caps = accepted(provider={"max_price": {"prompt": 0.25, "completion": "0.0000015"}}).routing()
    assert (caps.max_input_price, caps.max_output_price) == (250_000, 1)
    assert accepted(provider={"max_price": {"prompt": "0.0000009"}}).routing().max_input_price == 0


def test_route_other_than_fallback_is_refused() -> None:
    assert refused(route="sort").param == "route"


@pytest.mark.parametrize(
    ("request_type", "body"),
    [(CompletionRequest, {"prompt": "Once upon"}), (EmbeddingRequest, {"input": "embed me"})],
)
def test_every_routed_endpoint_takes_the_dialect_and_its_rule(
    request_type: type[CompletionRequest | EmbeddingRequest], body: dict[str, Any]
) -> None:
    schema = jsonschema.Draft202012Validator(request_type.model_json_schema())
    payload = {"model": "m:floor", "provider": {"only": ["cheap"], "zdr": False}, **body}
    assert schema.is_valid(payload)
    request = request_type.model_validate(payload)
    assert (request.routed_model, request.routing().tier, request.routing().only_hosters) == (
        "m",
        "cheapest",
        ["cheap"],
    )
    assert hoster_body(payload) == {"model": "m:floor", **body}
    conflict = payload | {"tier": "fastest"}
    assert not schema.is_valid(conflict)
    with pytest.raises(ValidationError) as info:
        request_type.model_validate(conflict)
    assert validation_failure(conflict, info.value.errors(include_url=False)).param == "model"
