"""OpenAI's published schemas as JSON Schema validators, so tests can check what goes over the wire.

The spec (``shared/openai-openapi/openapi.yaml``, beside the repository) declares OpenAPI 3.1 but still carries
OpenAPI 3.0 keywords in places. Converting them is all this module does; nothing else is loosened:

- ``nullable: true`` becomes ``{"anyOf": [<the schema without it>, {"type": "null"}]}``, and an ``allOf`` member
  that only says ``nullable: true`` (3.0's way to make a ``$ref`` nullable) makes its parent nullable;
- a boolean ``exclusiveMinimum``/``exclusiveMaximum`` takes the value of ``minimum``/``maximum``, as in JSON Schema.

``$ref: '#/components/schemas/X'`` resolves through a ``referencing`` registry holding the converted components.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "openai-openapi" / "openapi.yaml"
SPEC_URI = "urn:openai-openapi"

# Keywords whose value is a schema, a map of schemas or a list of schemas; every other value is data.
_SCHEMA_KEYWORDS = frozenset(
    {
        "items",
        "additionalItems",
        "not",
        "additionalProperties",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_ANNOTATIONS = frozenset({"description", "title"})


@functools.cache
def openai_validator(schema_name: str) -> Validator:
    """A validator for ``components.schemas[schema_name]`` of OpenAI's spec, e.g. ``CreateChatCompletionResponse``."""
    registry, names = _spec_registry()
    if schema_name not in names:
        raise KeyError(f"{schema_name} is not in components.schemas of {SPEC_PATH}")
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry)


@functools.cache
def _spec_registry() -> tuple[Registry[Any], frozenset[str]]:
    """The converted components in a registry under ``SPEC_URI``, and their names."""
    with SPEC_PATH.open("rb") as spec_file:
        spec = yaml.load(spec_file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = {name: json_schema(schema) for name, schema in spec["components"]["schemas"].items()}
    resource = DRAFT202012.create_resource({"components": {"schemas": schemas}})
    return Registry().with_resource(SPEC_URI, resource), frozenset(schemas)


def json_schema(schema: Any) -> Any:
    """``schema`` (an OpenAPI schema object, or a boolean schema) as JSON Schema 2020-12."""
    if not isinstance(schema, dict):
        return schema
    nullable = schema.get("nullable") is True
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "nullable":
            continue
        if key == "allOf" and any(_only_nullable(member) for member in value):
            nullable = True
            value = [member for member in value if not _only_nullable(member)]
        if key in _SCHEMA_KEYWORDS:
            converted[key] = [json_schema(item) for item in value] if isinstance(value, list) else json_schema(value)
        elif key in _SCHEMA_MAP_KEYWORDS:
            converted[key] = {name: json_schema(item) for name, item in value.items()}
        elif key in _SCHEMA_LIST_KEYWORDS:
            converted[key] = [json_schema(item) for item in value]
        else:
            converted[key] = value
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if converted.get(exclusive) is True and bound in converted:
            converted[exclusive] = converted.pop(bound)
        elif converted.get(exclusive) is False:
            del converted[exclusive]
    return {"anyOf": [converted, {"type": "null"}]} if nullable else converted


def _only_nullable(member: Any) -> bool:
    """An ``allOf`` member that says nothing but ``nullable: true`` (and perhaps a description)."""
    return isinstance(member, dict) and member.get("nullable") is True and set(member) <= {"nullable", *_ANNOTATIONS}
