"""Values the simulator generates for a JSON Schema: structured outputs and tool-call arguments must validate."""

from __future__ import annotations

import datetime
import enum
import itertools
import uuid
from typing import Annotated, Any, Literal

import jsonschema
import openai
import orjson
import pydantic
import pytest

from services.simulator.schema_example import schema_example


def words() -> Any:
    counter = itertools.count()
    return lambda: f"word{next(counter)}"


def example(schema: dict[str, Any]) -> Any:
    value = schema_example(schema, words())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(
        value
    )
    return value


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "word0"),
        ({"type": "string", "enum": ["red", "green"]}, "red"),
        ({"type": "string", "format": "date-time"}, "2024-01-01T12:00:00Z"),
        ({"type": "string", "format": "uuid"}, "00000000-0000-4000-8000-000000000000"),
        ({"type": "string", "format": "no-such-format"}, "word0"),
        ({"const": {"fixed": [1, 2]}}, {"fixed": [1, 2]}),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "number", "minimum": 2.5}, 2.5),
        ({"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 3}, 2.5),
        ({"type": "integer", "multipleOf": 5}, 5),
        ({"type": "integer", "multipleOf": 5, "minimum": 6, "maximum": 12}, 10),
        ({"type": "integer", "multipleOf": 4, "maximum": -1}, -4),
        ({"type": "number", "multipleOf": 0.25, "minimum": 2.1}, 2.25),
        ({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2}, {"key0": 1, "key1": 1}),
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


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 3


class Address(pydantic.BaseModel):
    street: str
    postcode: str | None = None


class Cat(pydantic.BaseModel):
    kind: Literal["cat"]
    lives: int = pydantic.Field(ge=1, le=9)


class Dog(pydantic.BaseModel):
    kind: Literal["dog"]
    good: bool


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


class Person(pydantic.BaseModel):
    """What a client's structured output might be: every kind of schema pydantic writes for one."""

    name: str = pydantic.Field(min_length=2, max_length=40)
    age: int = pydantic.Field(ge=18, le=150)
    score: float = pydantic.Field(gt=0, lt=1)
    colour: Colour
    priority: Priority
    tags: list[str]
    home: Address
    work: Address | None
    pet: Annotated[Cat | Dog, pydantic.Field(discriminator="kind")]
    pets: list[Cat | Dog]
    family: Node
    counts: dict[str, int]
    nickname: str | None = None
    born: datetime.date
    seen: datetime.datetime
    wakes: datetime.time
    lease: datetime.timedelta
    id: uuid.UUID
    website: pydantic.HttpUrl
    step: int = pydantic.Field(multiple_of=5)
    pair: tuple[int, str]
    grid: list[list[Address]]
    triple: list[int] = pydantic.Field(min_length=3, max_length=3)


PYDANTIC_SCHEMAS = {
    # instructor's tools and response_format send the model's own schema (``model_json_schema``).
    "model_json_schema": Person.model_json_schema(),
    # The openai SDK's parse() and pydantic_function_tool(), and the Agents SDK's output_type, send it strict:
    # every property required, additionalProperties false.
    "strict": openai.pydantic_function_tool(Person)["function"]["parameters"],
}


@pytest.mark.parametrize("schema", PYDANTIC_SCHEMAS.values(), ids=PYDANTIC_SCHEMAS.keys())
def test_pydantic_generated_schemas_get_values_the_model_parses(schema: dict[str, Any]) -> None:
    assert "$defs" in schema
    value = example(schema)

    person = Person.model_validate_json(orjson.dumps(value))

    assert person.colour is Colour.RED
    assert person.priority is Priority.LOW
    assert person.age == 18
    assert isinstance(person.pet, Cat)
    assert person.pet.lives == 1
    assert person.family.children
    assert person.step == 5
    assert len(person.triple) == 3
    # anyOf's first branch, not null: Optional fields get values, so a client's code for them runs.
    assert isinstance(person.home.postcode, str)
    assert isinstance(person.work, Address)
