"""The ingress's limit on how deep a request body nests."""

from __future__ import annotations

from typing import Any

from services.ingress.handlers import MAX_JSON_DEPTH, too_deep


def nested(depth: int) -> Any:
    """A JSON value ``depth`` containers deep, alternating objects and arrays."""
    value: Any = {}
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def test_a_body_is_too_deep_only_past_the_limit() -> None:
    assert not too_deep(nested(1))
    assert not too_deep(nested(MAX_JSON_DEPTH))
    assert too_deep(nested(MAX_JSON_DEPTH + 1))
    assert too_deep(nested(5000))
    assert not too_deep({"a": 1, "b": [1, 2, {"c": "x"}]}, limit=3)
    assert too_deep({"a": 1, "b": [1, 2, {"c": ["x"]}]}, limit=3)
