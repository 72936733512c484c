"""llama.cpp (llama-cpp-python in-process) loads the tiny model in every weight type and generates with it: the
quantized files are ones an engine serves, and their greedy logprobs are near, not equal to, F32's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libs.devstack.tinymodel import WEIGHT_TYPES, WeightType, tiny_model

pytestmark = pytest.mark.integration

llama_cpp = pytest.importorskip("llama_cpp")


def greedy(path: Path) -> Any:
    """A short greedy chat completion with logprobs from the model at ``path`` (one thread)."""
    llm = llama_cpp.Llama(model_path=str(path), n_threads=1, n_ctx=256, logits_all=True, verbose=False)
    try:
        return llm.create_chat_completion(
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            temperature=0,
            max_tokens=4,
            logprobs=True,
            top_logprobs=5,
        )
    finally:
        llm.close()


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[WeightType, Any]:
    cache = tmp_path_factory.mktemp("models")
    return {weights: greedy(tiny_model(0, cache, weights=weights).gguf) for weights in WEIGHT_TYPES}


@pytest.mark.parametrize("weights", WEIGHT_TYPES)
def test_llama_cpp_generates_with_every_weight_type(answers: dict[WeightType, Any], weights: WeightType) -> None:
    choice = answers[weights]["choices"][0]
    assert choice["finish_reason"] == "length"
    assert answers[weights]["usage"]["completion_tokens"] == 4
    assert len(choice["logprobs"]["content"]) == 4


def test_lower_precision_moves_the_logprobs_of_the_same_draw(answers: dict[WeightType, Any]) -> None:
    def first(weights: WeightType) -> dict[str, float]:
        top = answers[weights]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {entry["token"]: float(entry["logprob"]) for entry in top}

    reference = first("f32")
    for weights in ("f16", "q8_0", "q4_0"):
        other = first(weights)
        shared = reference.keys() & other.keys()
        assert shared, weights  # the same model: its top tokens overlap
        assert any(reference[token] != other[token] for token in shared), weights
