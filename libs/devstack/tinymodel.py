"""A tiny llama-architecture model with random weights, for a real inference engine in tests and ``make run``.

``tiny_model(seed)`` writes, once per content hash, a directory holding:

- ``model.gguf``: a llama model llama.cpp loads (2 layers, 64 wide, random weights drawn from ``seed``) with its
  byte-level BPE tokenizer and its chat template embedded, as a converted Hugging Face model has them;
- ``tokenizer.json`` and ``tokenizer_config.json``: the same tokenizer and template as Hugging Face files, so a
  token counter loading them counts what the engine counts.

``weights`` picks how the matrices are stored: ``f32`` (the default), ``f16``, or quantized as ``q8_0`` or
``q4_0``, as hosters serve real models. Every weight type stores the same F32 draw of ``seed`` (converted or
quantized), so ``tiny_model(0, weights="q4_0")`` is model 0 quantized, not another model; norm vectors stay F32
(llama.cpp wants its 1-D norms F32).

The tokenizer is trained with ``tokenizers`` on ``engine_corpus.txt`` (prose shipped in this directory) and does
not depend on the seed: models of other seeds are other weights behind the same tokenizer. Nothing is
downloaded; everything is deterministic from the corpus, the shape and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import gguf
import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = Path(__file__).with_name("engine_corpus.txt")
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".computeshare" / "models"
# Bumped whenever what this module writes changes for the same inputs (the cache key includes it).
MAKER_VERSION = 1

# How the matrices are stored; the first, F32, is the default and keeps the cache directories it always had.
WeightType = Literal["f32", "f16", "q8_0", "q4_0"]
WEIGHT_TYPES: tuple[WeightType, ...] = get_args(WeightType)
# Each weight type's tensor type for the matrices and its GGUF ``general.file_type``.
TENSOR_TYPES: dict[WeightType, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES: dict[WeightType, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"  # ends an assistant's turn: the engine stops there
END_OF_TEXT = "<|end_of_text|>"
SPECIAL_TOKENS = (
    BOS_TOKEN,
    END_OF_TEXT,
    "<|start_header_id|>",
    "<|end_header_id|>",
    EOS_TOKEN,
    "<|tool_call|>",
)

# A Hugging Face chat template (Jinja2) in Llama 3's shape: system, user, assistant (with tool calls), tool
# results, the tools offered, and the assistant's header when a generation prompt is asked for. Content given
# as parts keeps its text parts.
CHAT_TEMPLATE = """{{- bos_token -}}
{%- if tools -%}
{{- '<|start_header_id|>tools<|end_header_id|>\\n\\n' -}}
{%- for tool in tools -%}
{{- tool | tojson -}}{{- '\\n' -}}
{%- endfor -%}
{{- '<|eot_id|>' -}}
{%- endif -%}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- elif message['content'] is iterable -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- if message['tool_calls'] is defined and message['tool_calls'] -%}
{%- for call in message['tool_calls'] -%}
{{- '<|tool_call|>' + call['function']['name'] + ' ' -}}
{%- if call['function']['arguments'] is string -%}
{{- call['function']['arguments'] -}}
{%- else -%}
{{- call['function']['arguments'] | tojson -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}"""


@dataclass(frozen=True)
class TinyShape:
    """The model's size: few layers, a narrow width, a small vocabulary (``vocab_size`` is the trainer's target;
    the corpus may yield fewer tokens). ``kv_heads`` below ``heads`` makes it grouped-query attention, as most
    open models are."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    feed_forward: int = 192
    context_length: int = 2048
    vocab_size: int = 4096
    rope_freq_base: float = 10000.0
    rms_norm_eps: float = 1e-5


@dataclass(frozen=True)
class TinyModel:
    """One written model: its directory and the files in it."""

    directory: Path
    seed: int
    weights: WeightType = "f32"

    @property
    def gguf(self) -> Path:
        """The model llama.cpp loads, tokenizer and chat template included."""
        return self.directory / "model.gguf"

    @property
    def tokenizer_json(self) -> Path:
        """The tokenizer as ``tokenizers`` (and transformers' fast tokenizers) load it."""
        return self.directory / "tokenizer.json"

    @property
    def tokenizer_config(self) -> Path:
        """transformers' ``tokenizer_config.json``: the chat template, the BOS and EOS tokens."""
        return self.directory / "tokenizer_config.json"

    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, loaded from ``tokenizer.json``."""
        return Tokenizer.from_file(str(self.tokenizer_json))


def train_tokenizer(corpus: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenization, every byte in its alphabet, so any text encodes)
    trained on ``corpus``, with ``SPECIAL_TOKENS`` first in its vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    return tokenizer


def model_digest(seed: int, shape: TinyShape, corpus: str, weights: WeightType = "f32") -> str:
    """The content hash naming a model's directory: everything that decides its files. The weight type is in
    it only when it is not F32, so F32 models keep the directories they had before weight types existed."""
    key: dict[str, object] = {
        "maker": MAKER_VERSION,
        "seed": seed,
        "shape": asdict(shape),
        "corpus": hashlib.sha256(corpus.encode()).hexdigest(),
        "template": CHAT_TEMPLATE,
        "tokenizers": tokenizers.__version__,
        "gguf": _gguf_version(),
    }
    if weights != "f32":
        key["weights"] = weights
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def tiny_model(
    seed: int = 0, cache_dir: Path | None = None, shape: TinyShape | None = None, weights: WeightType = "f32"
) -> TinyModel:
    """The tiny model of ``seed`` in ``cache_dir`` (default ``.computeshare/models``), its matrices stored as
    ``weights``, written on first use.

    A directory appears whole or not at all (written beside it, then renamed), so concurrent callers and an
    interrupted run never see half a model."""
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, not {weights!r}")
    shape = shape or TinyShape()
    corpus = CORPUS.read_text()
    root = cache_dir or DEFAULT_CACHE
    directory = root / f"tiny-llama-{model_digest(seed, shape, corpus, weights)}"
    model = TinyModel(directory, seed, weights)
    if model.gguf.exists():
        return model
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would keep an engine run as another user out
        write_model(staging, seed, shape, corpus, weights)
        try:
            os.rename(staging, directory)
        except OSError:
            if not model.gguf.exists():  # another writer's rename won; anything else is a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def write_model(directory: Path, seed: int, shape: TinyShape, corpus: str, weights: WeightType = "f32") -> None:
    """Write ``model.gguf``, ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
    tokenizer = train_tokenizer(corpus, shape.vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer, shape), indent=2) + "\n")
    write_gguf(directory / "model.gguf", tokenizer, seed, shape, weights)


def tokenizer_config(tokenizer: Tokenizer, shape: TinyShape) -> dict[str, object]:
    """transformers' ``tokenizer_config.json`` for ``tokenizer``: the template adds the BOS token itself, so the
    tokenizer adds none (as Llama 3's)."""
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.context_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_gguf(path: Path, tokenizer: Tokenizer, seed: int, shape: TinyShape, weights: WeightType = "f32") -> None:
    """A llama-architecture GGUF: ``shape``'s hyperparameters, ``tokenizer`` as a GPT-2 style vocabulary with its
    merges, the chat template, and the weights drawn from ``seed``, matrices stored as ``weights``."""
    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        raise ValueError("hidden must divide into heads, and heads into kv_heads")
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise ValueError("the tokenizer's ids are not 0..n-1")
    merges = [" ".join(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    specials = set(SPECIAL_TOKENS)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"tiny-llama-seed-{seed}" if weights == "f32" else f"tiny-llama-seed-{seed}-{weights}")
    writer.add_file_type(FILE_TYPES[weights])
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.hidden // shape.heads)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    # GPT-2's pre-tokenizer regex, the one ByteLevel(use_regex=True) applies: llama.cpp splits text as
    # ``tokenizers`` does, so both count the same tokens.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in specials else gguf.TokenType.NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[BOS_TOKEN])
    writer.add_eos_token_id(vocab[EOS_TOKEN])
    writer.add_eot_token_id(vocab[EOS_TOKEN])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in random_weights(len(tokens), seed, shape).items():
        data, raw_dtype = stored_tensor(tensor, weights)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def stored_tensor(tensor: np.ndarray, weights: WeightType) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """``tensor`` (F32) as the file stores it for ``weights``, and the raw type ``GGUFWriter.add_tensor`` needs
    for quantized bytes (None when the numpy dtype says it). 1-D tensors (the norms) stay F32."""
    qtype = TENSOR_TYPES[weights]
    if tensor.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        return tensor, None
    if qtype == gguf.GGMLQuantizationType.F16:
        return tensor.astype(np.float16), None
    return gguf.quants.quantize(tensor, qtype), qtype


def random_weights(vocab_size: int, seed: int, shape: TinyShape) -> dict[str, np.ndarray]:
    """Every tensor llama.cpp's llama graph reads, in gguf's numpy layout (rows = outputs), drawn from ``seed``.

    Norms are ones; matrices are normal with a standard deviation of 1/sqrt(fan-in), so activations keep
    their scale through the layers and the logits spread (a std of about 1): sampling picks varied tokens,
    and nothing overflows to NaN."""
    rng = np.random.default_rng(seed)
    head_dim = shape.hidden // shape.heads
    kv_width = shape.kv_heads * head_dim

    def matrix(rows: int, cols: int) -> np.ndarray:
        scaled: np.ndarray = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
        return scaled

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    tensors: dict[str, np.ndarray] = {"token_embd.weight": matrix(vocab_size, shape.hidden)}
    for layer in range(shape.layers):
        block = f"blk.{layer}"
        tensors |= {
            f"{block}.attn_norm.weight": ones(shape.hidden),
            f"{block}.attn_q.weight": matrix(shape.hidden, shape.hidden),
            f"{block}.attn_k.weight": matrix(kv_width, shape.hidden),
            f"{block}.attn_v.weight": matrix(kv_width, shape.hidden),
            f"{block}.attn_output.weight": matrix(shape.hidden, shape.hidden),
            f"{block}.ffn_norm.weight": ones(shape.hidden),
            f"{block}.ffn_gate.weight": matrix(shape.feed_forward, shape.hidden),
            f"{block}.ffn_up.weight": matrix(shape.feed_forward, shape.hidden),
            f"{block}.ffn_down.weight": matrix(shape.hidden, shape.feed_forward),
        }
    tensors["output_norm.weight"] = ones(shape.hidden)
    tensors["output.weight"] = matrix(vocab_size, shape.hidden)
    return tensors


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
