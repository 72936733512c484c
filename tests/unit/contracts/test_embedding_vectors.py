"""The one rule for an embeddings answer's vectors, which the adapter and the ingress both apply: one per input,
of one width (the ``dimensions`` asked for), finite, and in the encoding the client asked for."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from libs.contracts.openai import embedding_vectors


def packed(*numbers: float) -> str:
    """Base64 of little-endian float32s, as OpenAI sends ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(numbers)}f", *numbers)).decode()


def data(*vectors: Any) -> list[dict[str, Any]]:
    return [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]


def test_floats_and_base64_of_the_asked_width_pass_in_input_order() -> None:
    shuffled = list(reversed(data([1.0, 2.0], [3, 4.5])))
    assert embedding_vectors(shuffled, 2, 2) == [[1.0, 2.0], [3, 4.5]]
    assert embedding_vectors(data(packed(0.25, -1.5), packed(1, 2)), 2, 2, "base64") == [
        packed(0.25, -1.5),
        packed(1, 2),
    ]
    assert embedding_vectors(data(packed(0.5, 0.5, 0.5)), 1, None, "base64") == [packed(0.5, 0.5, 0.5)]


@pytest.mark.parametrize(
    ("vectors", "width", "encoding", "problem"),
    [
        (["AAAAPw=="], None, "float", "not a list"),  # base64 where floats were asked for
        ([[0.5]], None, "base64", "not base64"),  # floats where base64 was asked for
        (["not base64!"], None, "base64", "not base64"),
        ([base64.b64encode(b"\x00\x00\x80").decode()], None, "base64", "whole float32s"),
        ([""], None, "base64", "not a list"),
        ([packed(1, 2, 3)], 2, "base64", "expected 2"),  # not the dimensions asked for
        ([packed(1, 2), packed(1)], None, "base64", "expected 2"),  # widths differ
        ([packed(1, float("nan"))], None, "base64", "finite"),
        ([packed(float("inf"))], None, "base64", "finite"),
        ([[1.0, 2.0, 3.0]], 2, "float", "expected 2"),
        ([[1.0, 2.0], [1.0]], None, "float", "expected 2"),
        ([[float("nan")]], None, "float", "finite"),
        ([[True]], None, "float", "finite"),
    ],
)  # fmt: skip
def test_vectors_not_of_the_asked_shape_are_refused(
    vectors: list[Any], width: int | None, encoding: Any, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        embedding_vectors(data(*vectors), len(vectors), width, encoding)
