"""Tokenizers the tests train themselves (nothing is downloaded): byte-level BPE as open models use, with a
ChatML chat template that writes system, tool and tool-result messages the way Qwen's does."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from libs.tokens.model import TokenizerFiles

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool_call>", "</tool_call>"]

CHATML = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls | default([]) %}
{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

_SENTENCES = (
    "the weather in paris is sunny today and tomorrow it will rain over london while berlin stays cold "
    "tell me a story about a tokenizer that counted every byte of every prompt before the model answered "
    "get_weather city temperature celsius fahrenheit json arguments function tool call result value name "
    "hello bonjour grüße 東京 café naïve émigré 123 4567 89 { } [ ] : , \" ' ! ? . - _ ( )"
)
_WORDS = _SENTENCES.split(" ")


def corpus(lines: int, seed: int = 7, syllables: bool = False) -> list[str]:
    """Text to train on: sentences of the words above (and, with ``syllables``, made-up words, so a large
    vocabulary has enough distinct pairs to merge)."""
    rng = random.Random(seed)
    parts = [a + b for a in "kmnstrpvbdfgl" for b in "aeiou"]
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if syllables:
            words += ["".join(rng.choice(parts) for _ in range(rng.randint(2, 5))) for _ in range(12)]
            rng.shuffle(words)
        out.append(" ".join(words))
    return out


def train_tokenizer(vocab_size: int = 1200, lines: int = 400, syllables: bool = False) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer) with ChatML's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(corpus(lines, syllables=syllables), trainer)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in USER_DEFINED])
    return tokenizer


def config(chat_template: Any = CHATML, **extra: Any) -> dict[str, Any]:
    """A ``tokenizer_config.json`` for ``train_tokenizer``'s tokenizer."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": {"content": "<|im_end|>", "special": True, "__type": "AddedToken", "lstrip": False,
                      "rstrip": False, "normalized": False, "single_word": False},
        "pad_token": "<|endoftext|>",
        "chat_template": chat_template,
        **extra,
    }  # fmt: skip


def files(tokenizer: Tokenizer, tokenizer_config: dict[str, Any]) -> TokenizerFiles:
    """The two files as registered."""
    return TokenizerFiles(tokenizer.to_str().encode(), json.dumps(tokenizer_config).encode())


def write(directory: Path, tokenizer_files: TokenizerFiles) -> Path:
    """The two files in ``directory``, as a Hugging Face model directory holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(tokenizer_files.tokenizer_json)
    (directory / "tokenizer_config.json").write_bytes(tokenizer_files.tokenizer_config_json)
    return directory


def files_in(directory: Path) -> TokenizerFiles:
    """The two files of a model directory."""
    return TokenizerFiles(
        (directory / "tokenizer.json").read_bytes(), (directory / "tokenizer_config.json").read_bytes()
    )


def load_trained(directory: Path) -> Tokenizer:
    """The tokenizer of a model directory written by ``write``."""
    return Tokenizer.from_file(str(directory / "tokenizer.json"))
