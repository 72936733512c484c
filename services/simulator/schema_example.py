"""A value that satisfies a JSON Schema: the simulator's structured outputs and tool-call arguments.

Covers what OpenAI's structured outputs and function parameters use, and what pydantic generates for them:
``type`` (one or a list), ``properties``, ``required`` and ``minProperties``, ``items`` and ``prefixItems``,
``enum``, ``const``, ``anyOf``/``oneOf`` (the first branch), ``allOf``, local ``$ref``, numeric and length
bounds, ``multipleOf``, and the string ``format``s OpenAI supports (a fixed value each, which pydantic parses as
a datetime, a UUID, an e-mail address...). ``pattern`` and ``uniqueItems`` are not honoured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# Recursive schemas (a node holding nodes) stop growing here: deeper objects get only their required
# properties and deeper arrays only their minimum number of items.
FULL_DEPTH = 6
# A schema that still nests past this can only be satisfied by an infinite value; it gets null.
MAX_DEPTH = 32

_TYPE_HINTS: tuple[tuple[str, str], ...] = (
    ("properties", "object"),
    ("required", "object"),
    ("additionalProperties", "object"),
    ("items", "array"),
    ("prefixItems", "array"),
    ("minimum", "number"),
    ("maximum", "number"),
    ("exclusiveMinimum", "number"),
    ("exclusiveMaximum", "number"),
    ("multipleOf", "number"),
)
# A value of each string format OpenAI's structured outputs allow, plus pydantic's URLs and IP addresses.
FORMAT_EXAMPLES: dict[str, str] = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00Z",
    "duration": "P1D",
    "email": "someone@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "ipvanyaddress": "192.0.2.1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def schema_example(schema: dict[str, Any], words: Callable[[], str]) -> Any:
    """A value valid against ``schema``; a string the schema does not pin is the next ``words()``."""
    return _Example(schema, words).value(schema, 0)


class _Example:
    """One generation: the root schema, for ``$ref``, and where strings come from."""

    def __init__(self, root: dict[str, Any], words: Callable[[], str]) -> None:
        self._root = root
        self._words = words

    def value(self, schema: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            return None
        if schema is True or not isinstance(schema, dict):
            return self._words()
        schema = self._flatten(schema, depth)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        if schema.get("format") in FORMAT_EXAMPLES:
            return FORMAT_EXAMPLES[schema["format"]]
        return _string(schema, self._words())

    def _flatten(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """``schema`` with its ``$ref``, first ``anyOf``/``oneOf`` branch and ``allOf`` members merged in."""
        for _ in range(MAX_DEPTH):
            if "$ref" in schema:
                rest = {key: value for key, value in schema.items() if key != "$ref"}
                schema = _merge(self._resolve(schema["$ref"]), rest)
            elif "anyOf" in schema or "oneOf" in schema:
                branches = schema.get("anyOf") or schema.get("oneOf") or [{}]
                rest = {key: value for key, value in schema.items() if key not in ("anyOf", "oneOf")}
                schema = _merge(rest, branches[0])
            elif "allOf" in schema:
                merged = {key: value for key, value in schema.items() if key != "allOf"}
                for member in schema["allOf"]:
                    merged = _merge(merged, member)
                schema = merged
            else:
                return schema
        return {"type": "null"}

    def _resolve(self, ref: str) -> Any:
        """A schema by a local JSON pointer (``#/$defs/X``, ``#/definitions/X``, ``#``); other refs allow anything."""
        if not ref.startswith("#"):
            return True
        target: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            target = target[int(key)] if isinstance(target, list) else target.get(key, True)
        return target

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties", {})
        required: list[str] = schema.get("required", [])
        names = list(properties) if depth < FULL_DEPTH else [name for name in properties if name in required]
        names.extend(name for name in required if name not in properties)
        value = {name: self.value(properties.get(name, True), depth + 1) for name in names}
        extra = schema.get("additionalProperties", True)
        for number in range(schema.get("minProperties", 0) - len(value)):
            value[f"key{number}"] = self.value(extra, depth + 1)
        return value

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix: list[Any] = schema.get("prefixItems", [])
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4 to 2019-09 tuples
            prefix, items = items, True
        minimum = schema.get("minItems", 0)
        count = max(minimum, len(prefix), 1) if depth < FULL_DEPTH else max(minimum, len(prefix))
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        return [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]


def _merge(base: Any, extra: Any) -> dict[str, Any]:
    """Two schemas that must both hold, as one: properties and required joined, other keys from ``extra``."""
    base = base if isinstance(base, dict) else {}
    extra = extra if isinstance(extra, dict) else {}
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = [*base["required"], *(name for name in extra["required"] if name not in base["required"])]
    return merged


def _type_of(schema: dict[str, Any]) -> str:
    """The type to generate: the first non-null one named, else the one the keywords imply, else string."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [name for name in kind if name != "null"]
        return kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    return next((hinted for keyword, hinted in _TYPE_HINTS if keyword in schema), "string")


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """1 (1.5 for a number), moved into the schema's bounds, then to a multiple of ``multipleOf`` inside them."""
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum", max)
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum", min)
    value: int | float
    if integer:
        value = 1
        if low is not None:
            value = max(value, math.floor(low) + 1 if low_open else math.ceil(low))
        if high is not None:
            value = min(value, math.ceil(high) - 1 if high_open else math.floor(high))
    else:
        value = 1.5
        if low is not None and (value < low or (low_open and value == low)):
            value = low + 1 if low_open else low
        if high is not None and (value > high or (high_open and value == high)):
            value = (low + high) / 2 if low is not None else high - 1 if high_open else high
    step = schema.get("multipleOf")
    if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
        return value
    for multiple in (math.ceil(value / step) * step, math.floor(value / step) * step):
        below_high = high is None or multiple < high or (not high_open and multiple == high)
        above_low = low is None or multiple > low or (not low_open and multiple == low)
        if below_high and above_low:
            return round(multiple) if integer else multiple
    return value


def _bound(
    schema: dict[str, Any], inclusive: str, exclusive: str, tighter: Callable[[float, float], float]
) -> tuple[float | None, bool]:
    """The tighter of an inclusive and an exclusive bound, and whether it is exclusive."""
    value: float | None = schema.get(inclusive)
    limit = schema.get(exclusive)
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        return value, False
    if value is None or tighter(value, limit) == limit:
        return limit, True
    return value, False


def _string(schema: dict[str, Any], words: str) -> str:
    """``words``, padded or cut to the schema's length bounds."""
    minimum = schema.get("minLength", 0)
    if len(words) < minimum:
        words = words + "x" * (minimum - len(words))
    if "maxLength" in schema:
        words = words[: schema["maxLength"]]
    return words
