"""A model's tokenizer, loaded from Hugging Face's ``tokenizer.json`` and ``tokenizer_config.json``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tokenizers import Tokenizer

from libs.tokens.templates import (
    SPECIAL_TOKEN_NAMES,
    ChatTemplateError,
    chat_templates_of,
    pick_template,
    probe_template,
    render_chat,
)

# The largest file of either kind a registration takes: a 256k-vocabulary tokenizer.json is about 20 MB.
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class TokenizerFilesError(ValueError):
    """``tokenizer.json`` or ``tokenizer_config.json`` that cannot be read as a tokenizer."""


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data``, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TokenizerFiles:
    """A model's two tokenizer files as registered, byte for byte."""

    tokenizer_json: bytes
    tokenizer_config_json: bytes

    @cached_property
    def tokenizer_sha256(self) -> str:
        """SHA-256 of ``tokenizer.json``."""
        return sha256_hex(self.tokenizer_json)

    @cached_property
    def config_sha256(self) -> str:
        """SHA-256 of ``tokenizer_config.json``."""
        return sha256_hex(self.tokenizer_config_json)


def _token_text(value: Any) -> str | None:
    """A special token as a config writes it: a string, or an ``AddedToken`` dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


@dataclass
class ModelTokenizer:
    """One model's tokenizer and chat templates, ready to count. Build it with ``load_model_tokenizer``."""

    tokenizer: Tokenizer
    config: dict[str, Any]
    # The SHA-256s of the files it was loaded from (the files themselves are not kept).
    tokenizer_sha256: str
    config_sha256: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_templates: dict[str, str] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token's text, as the config names it."""
        return self.special_tokens.get("eos_token")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """``text``'s token ids; ``add_special_tokens`` as transformers' tokenizer call takes it (the
        post-processor's BOS/EOS). Added tokens written in ``text`` count as one token each, as in
        transformers with its default ``split_special_tokens=False``."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def count(self, texts: Sequence[str], add_special_tokens: bool = False) -> int:
        """The tokens of every text of ``texts``, each encoded on its own, summed."""
        if not texts:
            return 0
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
        return sum(len(e) for e in encodings)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_name: str | None = None,
        **variables: Any,
    ) -> str:
        """What ``apply_chat_template(..., tokenize=False)`` renders for this model (``libs.tokens.templates``);
        ``template_name`` picks one of several named templates, else transformers' default pick."""
        if template_name is not None:
            if template_name not in self.chat_templates:
                raise ChatTemplateError(f"the model has no chat template named {template_name!r}")
            source = self.chat_templates[template_name]
        else:
            source = pick_template(self.chat_templates, tools)
        return render_chat(source, messages, tools=tools, documents=documents,
                           add_generation_prompt=add_generation_prompt, special_tokens=self.special_tokens,
                           **variables)  # fmt: skip

    def vet(self) -> None:
        """Raise ``UnsafeChatTemplate`` if any chat template reaches outside its sandbox on a probe conversation,
        ``ChatTemplateError`` if one does not compile or renders nothing: run once, when a model is registered."""
        for source in self.chat_templates.values():
            probe_template(source, self.special_tokens)


def _parse_json(data: bytes, name: str, limit: int) -> Any:
    if len(data) > limit:
        raise TokenizerFilesError(f"{name} is larger than {limit} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerFilesError(f"{name} is not JSON: {exc}") from None


def load_model_tokenizer(files: TokenizerFiles) -> ModelTokenizer:
    """The model tokenizer of ``files``: ``tokenizer.json`` through ``tokenizers.Tokenizer.from_str``, the
    config's special tokens (strings or ``AddedToken`` dicts) and chat template(s). The config's
    ``add_bos_token``/``add_eos_token`` are not read: transformers 5 drops them when a ``tokenizer.json`` is
    there (``PreTrainedTokenizerBase._from_pretrained``), whose post-processor alone says whether encoding
    with special tokens adds a BOS or an EOS. ``TokenizerFilesError`` when a file cannot be read,
    ``ChatTemplateError`` for a chat template that is neither a string nor a list of named templates.
    No template is rendered here (see ``vet``)."""
    if len(files.tokenizer_json) > MAX_TOKENIZER_BYTES:
        raise TokenizerFilesError(f"tokenizer.json is larger than {MAX_TOKENIZER_BYTES} bytes")
    config = _parse_json(files.tokenizer_config_json, "tokenizer_config.json", MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise TokenizerFilesError("tokenizer_config.json is not an object")
    try:
        tokenizer = Tokenizer.from_str(files.tokenizer_json.decode())
    except Exception as exc:  # the Rust side raises bare Exceptions
        raise TokenizerFilesError(f"tokenizer.json is not a tokenizer: {exc}") from None
    # The tokenizer never pads or truncates what it counts.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    special = {name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name))) is not None}
    return ModelTokenizer(
        tokenizer=tokenizer,
        config=config,
        tokenizer_sha256=files.tokenizer_sha256,
        config_sha256=files.config_sha256,
        special_tokens=special,
        chat_templates=chat_templates_of(config),
    )
