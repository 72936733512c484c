"""A GGUF model's tokenizer as Hugging Face's two files, so a llama.cpp hoster's model registers like any other.

llama.cpp keeps a byte-level BPE tokenizer (``tokenizer.ggml.model`` ``gpt2``) as its token strings (in GPT-2's
byte-to-unicode alphabet, as ``tokenizer.json`` has them), merges (``"a b"``), token types and special token ids,
and names its pre-tokenizer (``tokenizer.ggml.pre``); ``tokenizer.chat_template`` is the chat template
transformers had. This rebuilds the ``tokenizer.json`` and ``tokenizer_config.json`` those came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from libs.tokens.model import TokenizerFiles

# llama.cpp's token types (``gguf.TokenType``).
_CONTROL, _USER_DEFINED = 3, 4

# Each pre-tokenizer llama.cpp names that a ``tokenizer.json`` can express, with the split llama.cpp's
# ``llama-vocab.cpp`` makes for it (the same as the Hugging Face tokenizers of those families).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = ("gpt-2", "llama-bpe", "qwen2")


class GgufTokenizerError(ValueError):
    """A GGUF whose tokenizer cannot be rebuilt as a ``tokenizer.json``."""


def _pre_tokenizer(pre: str) -> tuple[Any, bool]:
    """The pre-tokenizer of llama.cpp's ``pre`` and whether the BPE ignores merges for whole-vocabulary words
    (llama.cpp does for Llama 3, as its ``tokenizer.json`` says ``ignore_merges``)."""
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    split = {"llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}.get(pre)
    if split is None:
        raise GgufTokenizerError(
            f"the GGUF's pre-tokenizer {pre!r} is not one this registry can rebuild (it can: "
            f"{', '.join(SUPPORTED_PRE)}): register the model with --tokenizer and --tokenizer-config instead"
        )
    sequence = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return sequence, pre == "llama-bpe"


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def tokenizer_files_from_gguf(path: Path) -> TokenizerFiles:
    """``tokenizer.json`` and ``tokenizer_config.json`` equal in encoding to the tokenizer inside the GGUF at
    ``path`` (read with ``gguf.GGUFReader``, memory-mapped: the weights are never read). Byte-level BPE
    (``tokenizer.ggml.model`` ``gpt2``) only, with one of ``SUPPORTED_PRE``; ``GgufTokenizerError`` otherwise."""
    from gguf import GGUFReader  # its import pulls numpy in: only for a registration from a GGUF

    try:
        reader = GGUFReader(path, "r")
    except (OSError, ValueError) as exc:
        raise GgufTokenizerError(f"{path} is not a GGUF file: {exc}") from None
    kind = _field(reader, "tokenizer.ggml.model")
    if kind is None:
        raise GgufTokenizerError(f"{path} holds no tokenizer (no tokenizer.ggml.model)")
    if kind != "gpt2":
        raise GgufTokenizerError(
            f"the GGUF's tokenizer is {kind!r}; only byte-level BPE ('gpt2') can be registered from a GGUF: "
            "register the model with --tokenizer and --tokenizer-config instead"
        )
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens") or []
    merges: list[str] = _field(reader, "tokenizer.ggml.merges") or []
    types: list[int] = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if not tokens or len(types) != len(tokens):
        raise GgufTokenizerError("the GGUF's token list is empty or its token types do not match it")
    pre_tokenizer, ignore_merges = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre") or "default")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise GgufTokenizerError(f"the GGUF has a merge that is not two tokens: {merge!r}")
        pairs.append((left, right))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GgufTokenizerError("the GGUF's token list names a token twice")
    bpe = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [
        AddedToken(token, special=kind == _CONTROL, normalized=False)
        for token, kind in zip(tokens, types, strict=True)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer.add_tokens(added)

    def token(key: str) -> str | None:
        index = _field(reader, key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    # llama.cpp's add_bos_token / add_eos_token (absent: neither, as for GPT-2's own models) go where
    # transformers reads them beside a tokenizer.json: its post-processor.
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token") or False)
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token") or False)
    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    if (add_bos and bos is not None) or (add_eos and eos is not None):
        first = [bos] if add_bos and bos is not None else []
        last = [eos] if add_eos and eos is not None else []
        single = " ".join([*first, "$A:0", *last])
        pair = " ".join([*first, "$A:0", *last, *first, "$B:1", *last])
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in dict.fromkeys(first + last)]
        )

    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):  # fmt: skip
        if (text := token(f"tokenizer.ggml.{key}")) is not None:
            config[name] = text
    config["add_bos_token"], config["add_eos_token"] = add_bos, add_eos
    templates = _chat_templates(reader)
    if templates is not None:
        config["chat_template"] = templates
    return TokenizerFiles(
        tokenizer_json=tokenizer.to_str().encode(),
        tokenizer_config_json=json.dumps(config, ensure_ascii=False, indent=2).encode(),
    )


def _chat_templates(reader: Any) -> str | list[dict[str, str]] | None:
    """The GGUF's chat template: one string, or named ones (``tokenizer.chat_templates`` lists the names
    beside the default) as ``tokenizer_config.json``'s list."""
    default = _field(reader, "tokenizer.chat_template")
    names = _field(reader, "tokenizer.chat_templates") or []
    named = [
        {"name": n, "template": t}
        for n in names
        if isinstance(t := _field(reader, f"tokenizer.chat_template.{n}"), str)
    ]
    if not named:
        return default if isinstance(default, str) else None
    if isinstance(default, str):
        named.insert(0, {"name": "default", "template": default})
    return named
