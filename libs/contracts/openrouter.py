"""OpenRouter's routing dialect, accepted next to ours and mapped onto the same ``RoutingPreferences``.

What is accepted: the ``provider`` object (``order``, ``allow_fallbacks``, ``only``, ``ignore``, ``sort``,
``max_price``, ``require_parameters``, ``data_collection``, ``quantizations``, and ``zdr`` /
``enforce_distillable_text`` when false), the ``models`` fallback list, ``route: "fallback"``, and the
``:floor`` / ``:nitro`` suffixes of ``model``. Two rules:

- A routing wish is given in one dialect only. ``tier``, ``provider.sort`` and a model suffix all rank hosters;
  ``fallback_models`` and ``models`` both list fallbacks; ``allow_hosters`` / ``provider.only``,
  ``deny_hosters`` / ``provider.ignore``, ``require_parameters`` / ``provider.require_parameters`` and
  ``privacy_mode`` / ``provider.data_collection`` say the same thing. Giving both of a pair is a 400 naming
  both, whatever the values (``CONFLICTS``; the OpenAPI document carries the same rules).
- A field or value the gateway cannot honour is a 400 naming it (``provider.zdr: true``, ``provider.foo``,
  ``provider.max_price.image``), never dropped.
"""

from __future__ import annotations

import math
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema

from libs.contracts.common import ParamError
from libs.contracts.hosters import Quantization
from libs.contracts.pricing import MICRO
from libs.contracts.routing import RankBy, RoutingPreferences

# Our routing fields: what the hoster never sees of the body.
OUR_ROUTING_FIELDS = (
    "tier",
    "privacy_mode",
    "trusted_only",
    "max_latency_ms",
    "fallback_models",
    "allow_hosters",
    "deny_hosters",
    "require_parameters",
)
# OpenRouter's, likewise removed before the body goes upstream.
OPENROUTER_FIELDS = ("provider", "models", "route")

ProviderSort = Literal["price", "throughput", "latency"]
SORT_RANKS: dict[str, RankBy] = {"price": "cheapest", "throughput": "throughput", "latency": "fastest"}
# ``model:floor`` is ``provider.sort: "price"``, ``model:nitro`` is ``provider.sort: "throughput"``, as on
# OpenRouter. The suffix is removed before routing: the model routed (and named in the response) is the rest.
MODEL_SUFFIXES: dict[str, RankBy] = {":floor": "cheapest", ":nitro": "throughput"}
_SUFFIX_PATTERN = ".(:floor|:nitro)$"
UNSUPPORTED = "unsupported_parameter"
CONFLICTING = "conflicting_parameters"


# A price cap as a decimal string: what OpenRouter's SDKs send (exponents are refused, as the schema says).
_PRICE_TEXT = r"^[0-9]{1,7}(\.[0-9]{1,20})?$"
_PRICE_LIMIT = 10_000_000


def _price_cap(value: Any) -> Any:
    """A price as OpenRouter's clients send it (a number, or a decimal string) as a ``Decimal``."""
    if isinstance(value, bool):
        return value  # refused by the Decimal check that follows
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a price must be a finite number")
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        if re.fullmatch(_PRICE_TEXT, value) is None:
            raise ValueError(f'{value!r} is not a price: write a decimal number such as "0.25"')
        return Decimal(value)
    return value


# USD per million tokens (taken as credits), OpenRouter's unit for ``max_price``: a number or a decimal string.
PriceCap = Annotated[
    Decimal,
    BeforeValidator(_price_cap),
    Field(ge=0, lt=_PRICE_LIMIT),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "exclusiveMaximum": _PRICE_LIMIT},
                {"type": "string", "pattern": _PRICE_TEXT},
            ]
        }
    ),
]
HosterRef = Annotated[str, Field(min_length=1, max_length=256)]


def _no_suffix(value: str) -> str:
    if split_model(value)[1] is not None:
        raise ValueError("a :floor or :nitro suffix ranks the whole request's hosters: put it on 'model'")
    return value


FallbackModel = Annotated[
    str,
    Field(min_length=1, max_length=256, json_schema_extra={"not": {"pattern": _SUFFIX_PATTERN}}),
    AfterValidator(_no_suffix),
]


def _cannot_honour(param: str, why: str) -> AfterValidator:
    """Refuse ``true`` for a restriction no hoster can promise; ``false`` (no restriction) is honoured."""

    def check(value: bool | None) -> bool | None:
        if value:
            raise ParamError(param, f"'{param}: true' cannot be honoured: {why}", UNSUPPORTED)
        return value

    return AfterValidator(check)


_ONLY_FALSE: dict[str, JsonValue] = {"not": {"const": True}}


class MaxPrice(BaseModel):
    """``provider.max_price``: the most the client will pay, per million tokens (OpenRouter's USD, taken as
    credits), the platform fee included. ``request`` is always met: no hoster here charges per request.
    ``image`` and ``audio`` are refused (images and audio are billed as prompt tokens, not priced apart)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: PriceCap | None = None
    completion: PriceCap | None = None
    request: PriceCap | None = None


class ProviderPreferences(BaseModel):
    """OpenRouter's ``provider`` object. Unlike the rest of the body, an unknown field is refused (a 400 naming
    it): a routing wish the gateway cannot honour must not be dropped silently. Hosters are named by UUID or
    by registered name (case-insensitive)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    order: list[HosterRef] | None = Field(None, max_length=256)
    allow_fallbacks: bool | None = None
    only: list[HosterRef] | None = Field(None, max_length=256)
    ignore: list[HosterRef] | None = Field(None, max_length=256)
    sort: ProviderSort | None = None
    max_price: MaxPrice | None = None
    require_parameters: bool | None = None
    data_collection: Literal["allow", "deny"] | None = None
    quantizations: list[Quantization] | None = Field(None, max_length=16)
    zdr: Annotated[
        bool | None,
        _cannot_honour("provider.zdr", "no hoster on this network makes a zero-data-retention promise"),
    ] = Field(None, json_schema_extra=_ONLY_FALSE)
    enforce_distillable_text: Annotated[
        bool | None,
        _cannot_honour("provider.enforce_distillable_text", "hosters declare no distillation terms"),
    ] = Field(None, json_schema_extra=_ONLY_FALSE)


def _our(field: str) -> dict[str, JsonValue]:
    return {"required": [field]}


def _theirs(field: str) -> dict[str, JsonValue]:
    return {
        "required": ["provider"],
        "properties": {
            "provider": {"type": "object", "required": [field], "properties": {field: {"not": {"type": "null"}}}}
        },
    }


# How a body gives each field that has a counterpart in the other dialect (JSON Schema).
_GIVEN: dict[str, dict[str, JsonValue]] = {
    **{field: _our(field) for field in ("tier", "fallback_models", "allow_hosters", "deny_hosters")},
    **{field: _our(field) for field in ("require_parameters", "privacy_mode", "models")},
    **{
        f"provider.{field}": _theirs(field)
        for field in ("sort", "only", "ignore", "require_parameters", "data_collection")
    },
    "model": {"required": ["model"], "properties": {"model": {"type": "string", "pattern": _SUFFIX_PATTERN}}},
}
# Pairs that say the same thing in the two dialects (the second is the one named as ``param``), and what.
CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("tier", "provider.sort", "how hosters are ranked"),
    ("tier", "model", "how hosters are ranked"),
    ("provider.sort", "model", "how hosters are ranked"),
    ("fallback_models", "models", "the fallback models"),
    ("allow_hosters", "provider.only", "which hosters may serve"),
    ("deny_hosters", "provider.ignore", "which hosters may not serve"),
    ("require_parameters", "provider.require_parameters", "whether hosters must take every parameter"),
    ("privacy_mode", "provider.data_collection", "whether cloud hosters may serve"),
)
# The same rules for the OpenAPI document: no body may give both fields of a pair.
CONFLICT_SCHEMAS: list[JsonValue] = [{"not": {"allOf": [_GIVEN[a], _GIVEN[b]]}} for a, b, _ in CONFLICTS]


def _label(field: str) -> str:
    return "the :floor/:nitro suffix of 'model'" if field == "model" else f"'{field}'"


def given_fields(fields_set: set[str], model: str, provider: ProviderPreferences | None) -> set[str]:
    """The fields of ``CONFLICTS`` this body gives (a ``provider`` field set to null is not given)."""
    given = {field for field in _GIVEN if "." not in field and field != "model" and field in fields_set}
    if split_model(model)[1] is not None:
        given.add("model")
    if provider is not None:
        given |= {f"provider.{name}" for name, value in provider if value is not None}
    return given


def check_conflicts(given: set[str]) -> None:
    """Raise ``ParamError`` (400 ``conflicting_parameters``) for the first pair given in both dialects."""
    for ours, theirs, what in CONFLICTS:
        if ours in given and theirs in given:
            raise ParamError(
                theirs,
                f"{_label(ours)} and {_label(theirs)} both set {what}: give one of them. The two routing "
                "dialects may be mixed, but not for the same thing.",
                CONFLICTING,
            )


def split_model(model: str) -> tuple[str, RankBy | None]:
    """``model`` without its ``:floor`` / ``:nitro`` suffix, and the ranking the suffix asks for."""
    for suffix, rank in MODEL_SUFFIXES.items():
        if model.endswith(suffix) and len(model) > len(suffix):
            return model.removesuffix(suffix), rank
    return model, None


def _micro(cap: Decimal | None) -> int | None:
    """A cap in credits per million tokens as micro-credits per million (rounded down: integer prices stay
    under the cap exactly when they stay under the rounded one)."""
    return None if cap is None else int(cap * MICRO)


def _refs(refs: list[str]) -> list[str]:
    """UUIDs in canonical form, names as given."""
    out = []
    for ref in refs:
        try:
            out.append(str(uuid.UUID(ref)))
        except ValueError:
            out.append(ref)
    return out


def openrouter_routing(
    ours: RoutingPreferences, model: str, provider: ProviderPreferences | None, models: list[str] | None
) -> tuple[str, RoutingPreferences]:
    """The model to route (suffix removed) and the routing preferences, ours completed with OpenRouter's.
    ``check_conflicts`` has run: no preference is given in both dialects."""
    routed, suffix_rank = split_model(model)
    update: dict[str, Any] = {}
    named: dict[str, str] = {}
    if suffix_rank is not None:
        update["tier"] = suffix_rank
    if models:
        update["fallback_models"] = list(dict.fromkeys(m for m in models if m != routed))
    if provider is not None:
        update |= _provider_update(provider, named)
    update["named_as"] = named
    return routed, ours.model_copy(update=update)


def _provider_update(provider: ProviderPreferences, named: dict[str, str]) -> dict[str, Any]:
    """The ``RoutingPreferences`` fields ``provider`` sets; ``named`` learns which ones it named."""
    update: dict[str, Any] = {}
    if provider.sort is not None:
        update["tier"] = SORT_RANKS[provider.sort]
    if provider.only is not None:
        update["allow_hosters"] = _refs(provider.only)
        named["allow_hosters"] = "provider.only"
    if provider.ignore is not None:
        update["deny_hosters"] = _refs(provider.ignore)
        named["deny_hosters"] = "provider.ignore"
    if provider.order:
        update["order_hosters"] = _refs(provider.order)
    if provider.allow_fallbacks is not None:
        update["allow_fallbacks"] = provider.allow_fallbacks
    if provider.require_parameters is not None:
        update["require_parameters"] = provider.require_parameters
        named["require_parameters"] = "provider.require_parameters"
    if provider.data_collection is not None:
        update["privacy_mode"] = provider.data_collection == "deny"
        named["privacy_mode"] = 'provider.data_collection "deny"'
    if provider.max_price is not None:
        update["max_input_price"] = _micro(provider.max_price.prompt)
        update["max_output_price"] = _micro(provider.max_price.completion)
    if provider.quantizations is not None:
        update["quantizations"] = list(provider.quantizations)
    return update
