"""OpenRouter's routing dialect, accepted next to ours and mapped onto the same ``RoutingPreferences``.

What is accepted: the ``provider`` object (``order``, ``allow_fallbacks``, ``only``, ``ignore``, ``sort``,
``max_price``, ``require_parameters``, ``data_collection``, ``quantizations``, and ``zdr`` /
``enforce_distillable_text`` when false), the ``models`` fallback list, ``route: "fallback"``, and the
``:floor`` / ``:nitro`` suffixes of ``model``. When both dialects are used:

- Filters from both apply, each only narrowing the choice: a hoster must be in ``allow_hosters`` and in
  ``provider.only``, in neither ``deny_hosters`` nor ``provider.ignore``; ``privacy_mode`` or
  ``provider.data_collection: "deny"`` keeps cloud hosters out, ``require_parameters`` or
  ``provider.require_parameters`` requires every parameter.
- Fallback lists add up: ``models`` first, then ``fallback_models``, each model once.
- A ranking cannot be merged: ``tier``, ``provider.sort`` and a model suffix each rank the hosters. Giving
  two of them is a 400 naming both, whatever the values (``CONFLICTS``; the OpenAPI document carries the
  same rules).
- A field or value the gateway cannot honour is a 400 naming it (``provider.zdr: true``, ``provider.foo``,
  ``provider.max_price.image``), never dropped.
"""

from __future__ import annotations

import math
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema

from libs.contracts.common import Contract, ParamError
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


class MaxPrice(Contract):
    """``provider.max_price``: the most the client will pay, per million tokens (OpenRouter's USD, taken as
    credits), the platform fee included. ``request`` is always met: no hoster here charges per request.
    ``image`` and ``audio`` are refused (images and audio are billed as prompt tokens, not priced apart)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: PriceCap | None = None
    completion: PriceCap | None = None
    request: PriceCap | None = None


class ProviderPreferences(Contract):
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


def _given(field: str) -> dict[str, JsonValue]:
    """JSON Schema matching a body that gives ``field`` (present, even as null)."""
    if field == "model":
        return {"required": ["model"], "properties": {"model": {"type": "string", "pattern": _SUFFIX_PATTERN}}}
    if field.startswith("provider."):
        inner = field.removeprefix("provider.")
        return {"required": ["provider"], "properties": {"provider": {"type": "object", "required": [inner]}}}
    return {"required": [field]}


def _absent(field: str) -> dict[str, JsonValue]:
    """JSON Schema matching a body without ``field`` (never the model suffix: see ``_conflict_schemas``)."""
    if field.startswith("provider."):
        return {"properties": {"provider": {"properties": {field.removeprefix("provider."): False}}}}
    return {"properties": {field: False}}


# Pairs of fields that each rank the hosters (the second is the one named as ``param``).
CONFLICTS: tuple[tuple[str, str], ...] = (("tier", "provider.sort"), ("tier", "model"), ("provider.sort", "model"))


def _conflict_schemas() -> list[JsonValue]:
    """``CONFLICTS`` as ``if``/``then`` rules, one per field on the ``if`` side, ``then`` holding the other
    fields ``false`` (a model suffix is only ever on the ``if`` side). No ``not``, and as few rules as can
    be: schemathesis expands each conditional into two alternatives and gives up on a schema past 32 of them
    (OpenAI's three cross-field rules already make 8), which is also why fallback lists add up rather than
    conflict."""
    absent: dict[str, list[JsonValue]] = {}
    for ours, theirs in CONFLICTS:
        first, second = (theirs, ours) if theirs == "model" else (ours, theirs)
        absent.setdefault(first, []).append(_absent(second))
    return [{"if": _given(first), "then": {"allOf": rules}} for first, rules in absent.items()]


# The same rules for the OpenAPI document: no body may give both fields of a pair.
CONFLICT_SCHEMAS = _conflict_schemas()


def _label(field: str) -> str:
    return "the :floor/:nitro suffix of 'model'" if field == "model" else f"'{field}'"


# Our own fields among ``CONFLICTS`` (read per request: computed once).
_OURS_IN_CONFLICTS = frozenset(field for pair in CONFLICTS for field in pair if field != "model" and "." not in field)


def given_fields(fields_set: set[str], model: str, provider: ProviderPreferences | None) -> set[str]:
    """The fields of ``CONFLICTS`` this body gives: present, even as null (as the OpenAPI rules read them)."""
    given = fields_set & _OURS_IN_CONFLICTS
    if split_model(model)[1] is not None:
        given.add("model")
    if provider is not None:
        given |= {f"provider.{name}" for name in provider.model_fields_set}
    return given


def check_conflicts(given: set[str]) -> None:
    """Raise ``ParamError`` (400 ``conflicting_parameters``) for the first pair given in both dialects."""
    for ours, theirs in CONFLICTS:
        if ours in given and theirs in given:
            raise ParamError(
                theirs,
                f"{_label(ours)} and {_label(theirs)} both rank the hosters: give one of them. The two routing "
                "dialects may be mixed, but one ranking cannot be merged with another.",
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
    ``check_conflicts`` has run: the hosters are ranked by one field at most."""
    routed, suffix_rank = split_model(model)
    update: dict[str, Any] = {}
    named: dict[str, str] = {}
    if suffix_rank is not None:
        update["tier"] = suffix_rank
    if models:
        listed = [*models, *ours.fallback_models]
        update["fallback_models"] = list(dict.fromkeys(m for m in listed if m != routed))
    if provider is not None:
        update |= _provider_update(provider, ours, named)
    update["named_as"] = named
    return routed, ours.model_copy(update=update)


def _provider_update(provider: ProviderPreferences, ours: RoutingPreferences, named: dict[str, str]) -> dict[str, Any]:
    """The ``RoutingPreferences`` fields ``provider`` sets, ``ours`` kept where both restrict the same thing;
    ``named`` learns the restrictions only OpenRouter's field asked for."""
    update: dict[str, Any] = {}
    if provider.sort is not None:
        update["tier"] = SORT_RANKS[provider.sort]
    if provider.only is not None:
        update["only_hosters"] = _refs(provider.only)
    if provider.ignore is not None:
        update["ignore_hosters"] = _refs(provider.ignore)
    if provider.order:
        update["order_hosters"] = _refs(provider.order)
    if provider.allow_fallbacks is not None:
        update["allow_fallbacks"] = provider.allow_fallbacks
    if provider.require_parameters and not ours.require_parameters:
        update["require_parameters"] = True
        named["require_parameters"] = "provider.require_parameters"
    if provider.data_collection == "deny" and not ours.privacy_mode:
        update["privacy_mode"] = True
        named["privacy_mode"] = 'provider.data_collection "deny"'
    if provider.max_price is not None:
        update["max_input_price"] = _micro(provider.max_price.prompt)
        update["max_output_price"] = _micro(provider.max_price.completion)
    if provider.quantizations is not None:
        update["quantizations"] = list(provider.quantizations)
    return update
