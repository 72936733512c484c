"""Values the simulator generates for a JSON Schema: structured outputs and tool-call arguments must validate."""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema
import pytest

from services.simulator.schema_example import schema_example


def words() -> Any:
    counter = itertools.count()
    return lambda: f"word{next(counter)}"


def example(schema: dict[str, Any]) -> Any:
    value = schema_example(schema, words())
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "word0"),
        ({"type": "string", "enum": ["red", "green"]}, "red"),
        ({"type": "string", "format": "date-time"}, "word0"),
        ({"const": {"fixed": [1, 2]}}, {"fixed": [1, 2]}),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "number", "minimum": 2.5}, 2.5),
        ({"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 3}, 2.5),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 1),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 1),
        ({"oneOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"type": "array", "items": {"type": "integer"}}, [1]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 3}, [1, 1, 1]),
        ({"type": "array", "maxItems": 0}, []),
        ({"type": "string", "minLength": 8, "maxLength": 9}, "word0xxx"),
        ({"type": "string", "maxLength": 2}, "wo"),
        ({}, "word0"),
    ],
)
def test_each_type_gets_a_valid_value(schema: dict[str, Any], expected: Any) -> None:
    assert example(schema) == expected


def test_objects_get_every_property_and_required_names_even_without_a_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "c"],
    }

    assert example(schema) == {"a": "word0", "b": 1, "c": "word1"}


def test_refs_to_defs_and_definitions_resolve() -> None:
    schema = {
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/point"}, "y": {"$ref": "#/definitions/label"}},
        "required": ["x", "y"],
        "$defs": {"point": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]}},
        "definitions": {"label": {"type": "string", "enum": ["north"]}},
    }

    assert example(schema) == {"x": {"lat": 1.5}, "y": "north"}


def test_all_of_merges_its_members() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    }

    assert example(schema) == {"a": 1, "b": True}


def test_recursive_schemas_end() -> None:
    schema = {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name"],
            }
        },
    }

    value = example(schema)

    depth, node = 0, value
    while node.get("children"):
        depth, node = depth + 1, node["children"][0]
    assert 1 < depth < 10


def test_openai_strict_schema_with_nullable_fields_and_nested_arrays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"explanation": {"type": "string"}, "output": {"type": ["string", "null"]}},
                    "required": ["explanation", "output"],
                    "additionalProperties": False,
                },
            },
            "final_answer": {"type": "string"},
        },
        "required": ["steps", "final_answer"],
        "additionalProperties": False,
    }

    assert example(schema) == {"steps": [{"explanation": "word0", "output": "word1"}], "final_answer": "word2"}
