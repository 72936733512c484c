"""A GGUF's tokenizer rebuilt as Hugging Face's files: a GGUF written here with gguf's own writer, from a
tokenizer trained here, reads back into a tokenizer that encodes every text as the original does."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer

from libs.tokens import count_chat_prompt, load_model_tokenizer
from libs.tokens.gguf_import import GgufTokenizerError, tokenizer_files_from_gguf
from tests.unit.tokens import trained

TEXTS = [
    "the weather in paris is sunny",
    "  leading spaces, 123 4567 and\nnew lines\n\n\ttabs",
    "東京 café naïve émigré 🙂 unseen bytes ☃",
    '<|im_start|>user\nhello<|im_end|>\n<tool_call>{"name": "get_weather"}</tool_call>',
    "",
]


def write_gguf(path: Path, tokenizer: Tokenizer, *, model: str = "gpt2", pre: str = "gpt-2",
               add_bos: bool | None = None, template: object = trained.CHATML) -> Path:  # fmt: skip
    """A GGUF holding ``tokenizer`` as llama.cpp's converter writes one (no tensors: only the tokenizer)."""
    document = json.loads(tokenizer.to_str())
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    added = {t["content"]: t["special"] for t in document["added_tokens"]}
    types = [
        gguf.TokenType.CONTROL if added.get(t) else gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL
        for t in tokens
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in document["model"]["merges"]]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if template is not None:
        writer.add_chat_template(template)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def original() -> Tokenizer:
    return trained.train_tokenizer(vocab_size=1500, lines=3000)


def test_a_gpt2_gguf_reads_back_into_a_tokenizer_that_encodes_as_the_original(
    original: Tokenizer, tmp_path: Path
) -> None:
    files = tokenizer_files_from_gguf(write_gguf(tmp_path / "m.gguf", original))
    rebuilt = load_model_tokenizer(files)
    for text in TEXTS:
        assert rebuilt.encode(text, add_special_tokens=True) == original.encode(text).ids
        assert rebuilt.tokenizer.decode(original.encode(text).ids, skip_special_tokens=False) == original.decode(
            original.encode(text).ids, skip_special_tokens=False
        )
    assert rebuilt.vocab_size == original.get_vocab_size()
    config = json.loads(files.tokenizer_config_json)
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|endoftext|>", "<|im_end|>", False)
    assert rebuilt.chat_templates == {"default": trained.CHATML}
    # And counts a chat as the original's files do.
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello 東京"}]}
    assert count_chat_prompt(rebuilt, body) == count_chat_prompt(
        load_model_tokenizer(trained.files(original, trained.config())), body
    )


def test_add_bos_and_named_templates_come_across(original: Tokenizer, tmp_path: Path) -> None:
    named = [{"name": "default", "template": "{{ messages[0].content }}"}, {"name": "tool_use", "template": "T"}]
    files = tokenizer_files_from_gguf(write_gguf(tmp_path / "bos.gguf", original, add_bos=True, template=named))
    rebuilt = load_model_tokenizer(files)
    bos = original.token_to_id("<|endoftext|>")
    assert rebuilt.encode("hello", add_special_tokens=True) == [bos, *original.encode("hello").ids]
    assert rebuilt.encode("hello", add_special_tokens=False) == original.encode("hello").ids
    assert rebuilt.chat_templates == {"default": "{{ messages[0].content }}", "tool_use": "T"}


def test_a_gguf_without_a_template_registers_without_one(original: Tokenizer, tmp_path: Path) -> None:
    files = tokenizer_files_from_gguf(write_gguf(tmp_path / "plain.gguf", original, template=None))
    assert load_model_tokenizer(files).chat_templates == {}


@pytest.mark.parametrize(
    ("model", "pre", "message"),
    [
        ("llama", "default", "only byte-level BPE"),
        ("gpt2", "deepseek-llm", "pre-tokenizer 'deepseek-llm' is not one"),
        ("gpt2", "default", "pre-tokenizer 'default' is not one"),
    ],
)
def test_other_tokenizers_are_refused_with_what_to_do_instead(
    original: Tokenizer, tmp_path: Path, model: str, pre: str, message: str
) -> None:
    path = write_gguf(tmp_path / "other.gguf", original, model=model, pre=pre)
    with pytest.raises(GgufTokenizerError, match=message) as refused:
        tokenizer_files_from_gguf(path)
    assert "--tokenizer" in str(refused.value)


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.gguf"
    path.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GgufTokenizerError, match="not a GGUF"):
        tokenizer_files_from_gguf(path)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_pre_tokenizers_rebuild(original: Tokenizer, tmp_path: Path, pre: str) -> None:
    # Their splits differ from GPT-2's on digits and contractions, not on plain words.
    rebuilt = load_model_tokenizer(tokenizer_files_from_gguf(write_gguf(tmp_path / "p.gguf", original, pre=pre)))
    assert rebuilt.encode(TEXTS[0]) == original.encode(TEXTS[0]).ids
