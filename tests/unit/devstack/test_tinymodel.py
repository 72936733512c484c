"""The tiny test model: a GGUF llama.cpp can load, with the tokenizer and chat template a token counter reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from libs.devstack.tinymodel import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    WEIGHT_TYPES,
    TinyModel,
    TinyShape,
    WeightType,
    tiny_model,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model(cache: Path) -> TinyModel:
    return tiny_model(0, cache)


def field(reader: gguf.GGUFReader, key: str) -> Any:
    found = reader.get_field(key)
    assert found is not None, key
    return found.contents()


def test_the_gguf_reads_back_as_a_llama_model_of_its_shape(model: TinyModel) -> None:
    shape = TinyShape()
    reader = gguf.GGUFReader(model.gguf)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == shape.layers
    assert field(reader, "llama.embedding_length") == shape.hidden
    assert field(reader, "llama.attention.head_count") == shape.heads
    assert field(reader, "llama.attention.head_count_kv") == shape.kv_heads
    assert field(reader, "llama.context_length") == shape.context_length
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    tokenizer = model.tokenizer()
    assert tokens == [tokenizer.id_to_token(i) for i in range(len(tokens))]
    assert tokens[field(reader, "tokenizer.ggml.bos_token_id")] == BOS_TOKEN
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == EOS_TOKEN
    merges = field(reader, "tokenizer.ggml.merges")
    assert isinstance(merges, list)
    assert len(merges) > 2000  # a few thousand merges: words, not bytes
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * shape.layers
    embedding = tensors["token_embd.weight"]
    assert list(embedding.shape) == [shape.hidden, len(tokens)]  # GGUF lists dimensions innermost first
    weights = np.asarray(embedding.data)
    assert np.isfinite(weights).all()
    assert 0.05 < float(weights.std()) < 0.5


def test_the_tokenizer_round_trips_text_and_keeps_special_tokens_whole(model: TinyModel) -> None:
    tokenizer = model.tokenizer()
    text = "The lighthouse keeper counted 108 steps, naïvely — and then “stopped”. 🦙\n\n  Done."
    encoding = tokenizer.encode(text)
    assert tokenizer.decode(encoding.ids) == text
    assert len(encoding.ids) < len(text.encode())  # merges were learnt: fewer tokens than bytes
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(f"a{token}b").tokens == ["a", token, "b"]


def test_the_hugging_face_files_carry_the_template_and_the_bos_and_eos_tokens(model: TinyModel) -> None:
    config = json.loads(model.tokenizer_config.read_text())
    assert (config["bos_token"], config["eos_token"]) == (BOS_TOKEN, EOS_TOKEN)
    assert config["chat_template"] == CHAT_TEMPLATE
    decoder = config["added_tokens_decoder"]
    assert {entry["content"] for entry in decoder.values()} == set(SPECIAL_TOKENS)
    assert Tokenizer.from_file(str(model.tokenizer_json)).get_vocab_size() == model.tokenizer().get_vocab_size()


def test_models_are_cached_by_content_and_other_seeds_share_the_tokenizer(cache: Path, model: TinyModel) -> None:
    before = model.gguf.stat().st_mtime_ns
    assert tiny_model(0, cache) == model
    assert model.gguf.stat().st_mtime_ns == before  # not written again
    other = tiny_model(1, cache)
    assert other.directory != model.directory
    assert other.tokenizer_json.read_bytes() == model.tokenizer_json.read_bytes()
    first, second = gguf.GGUFReader(model.gguf), gguf.GGUFReader(other.gguf)
    assert not np.array_equal(first.tensors[0].data, second.tensors[0].data)


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, model: TinyModel) -> None:
    again = tiny_model(0, tmp_path)
    assert again.gguf.read_bytes() == model.gguf.read_bytes()
    assert again.tokenizer_json.read_bytes() == model.tokenizer_json.read_bytes()


def test_the_weight_type_is_in_the_cache_key_only_when_not_f32(cache: Path, model: TinyModel) -> None:
    assert tiny_model(0, cache, weights="f32") == model
    directories = {tiny_model(0, cache, weights=weights).directory for weights in WEIGHT_TYPES}
    assert len(directories) == len(WEIGHT_TYPES)
    with pytest.raises(ValueError, match="weights must be one of"):
        tiny_model(0, cache, weights="q2_k")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("weights", "matrix_type", "file_type"),
    [
        ("f16", gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        ("q8_0", gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
        ("q4_0", gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    ],
)
def test_other_weight_types_store_the_same_draw_converted_with_norms_in_f32(
    cache: Path,
    model: TinyModel,
    weights: WeightType,
    matrix_type: gguf.GGMLQuantizationType,
    file_type: gguf.LlamaFileType,
) -> None:
    stored = tiny_model(0, cache, weights=weights)
    assert stored.weights == weights
    reader, original = gguf.GGUFReader(stored.gguf), gguf.GGUFReader(model.gguf)
    assert field(reader, "general.file_type") == file_type
    assert field(reader, "general.name") == f"tiny-llama-seed-0-{weights}"
    drawn = {tensor.name: tensor for tensor in original.tensors}
    tolerance = {"f16": 1e-3, "q8_0": 0.02, "q4_0": 0.2}[weights]
    for tensor in reader.tensors:
        source = drawn[tensor.name]
        if len(source.shape) == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name
            assert np.array_equal(tensor.data, source.data)
            continue
        assert tensor.tensor_type == matrix_type, tensor.name
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(source.data.shape)
        error = np.abs(values - source.data)
        assert 0 < float(error.max()) < tolerance, tensor.name  # the same weights, rounded: not a new draw
    assert stored.tokenizer_json.read_bytes() == model.tokenizer_json.read_bytes()
    assert stored.gguf.stat().st_size < model.gguf.stat().st_size
