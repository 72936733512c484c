"""The counting library against transformers' own ``apply_chat_template`` and tokenizer, on a tokenizer trained
here (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import processors

from libs.devstack.tinymodel import tiny_model
from libs.tokens import (
    ChatTemplateError,
    ChoiceText,
    ModelTokenizer,
    UnsafeChatTemplate,
    count_chat_prompt,
    count_completion,
    count_embedding_input,
    count_text_prompt,
    load_model_tokenizer,
    template_messages,
)
from tests.unit.tokens import trained

transformers = pytest.importorskip("transformers")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city, « en français » too",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "one user turn": ([{"role": "user", "content": "hello, tell me a story"}], None),
    "system and several turns": (
        [
            {"role": "system", "content": "Be brief. Réponds en français."},
            {"role": "user", "content": "the weather in paris?"},
            {"role": "assistant", "content": "sunny today and tomorrow it will rain"},
            {"role": "user", "content": "and in 東京? <|im_end|> is only text here"},
        ],
        None,
    ),
    "tools, a tool call and its result": (
        [
            {"role": "system", "content": "You call tools."},
            {"role": "user", "content": "weather in berlin?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "berlin"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 3, "unit": "celsius"}'},
        ],
        TOOLS,
    ),
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = trained.train_tokenizer(vocab_size=1500, lines=3000)
    return trained.write(tmp_path_factory.mktemp("tok"), trained.files(tokenizer, trained.config()))


@pytest.fixture(scope="module")
def ours(tokenizer_dir: Path) -> ModelTokenizer:
    return load_model_tokenizer(trained.files_in(tokenizer_dir))


@pytest.fixture(scope="module")
def theirs(tokenizer_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


def hf_ids(theirs: Any, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool) -> list[int]:
    encoded = theirs.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt)
    ids: list[int] = encoded["input_ids"]
    return ids


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_a_chat_renders_and_encodes_as_transformers_does(
    ours: ModelTokenizer, theirs: Any, name: str, generation_prompt: bool
) -> None:
    messages, tools = CONVERSATIONS[name]
    text = ours.render_chat(messages, tools=tools, add_generation_prompt=generation_prompt)
    assert text == theirs.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
    )
    assert ours.encode(text) == hf_ids(theirs, messages, tools, generation_prompt)
    assert text.endswith("<|im_start|>assistant\n") is generation_prompt


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_a_chat_requests_prompt_tokens_are_transformers_count_with_a_generation_prompt(
    ours: ModelTokenizer, theirs: Any, name: str
) -> None:
    messages, tools = CONVERSATIONS[name]
    # As an OpenAI client sends it: tool-call arguments as a JSON string, content as parts.
    sent = json.loads(json.dumps(messages))
    for message in sent:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
        if message["role"] == "user":
            message["content"] = [{"type": "text", "text": message["content"]}]
    body = {"model": "m", "messages": sent, **({"tools": tools} if tools else {})}
    assert count_chat_prompt(ours, body) == len(hf_ids(theirs, messages, tools, True))


def test_openai_messages_become_what_templates_read() -> None:
    messages = template_messages(
        [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"id": "2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
            ]},
        ]
    )  # fmt: skip
    assert messages[0]["content"] == "a\nb"
    assert [c["function"]["arguments"] for c in messages[1]["tool_calls"]] == [{"x": 1}, "not json"]


def test_named_templates_are_picked_as_transformers_picks_them(tokenizer_dir: Path, tmp_path: Path) -> None:
    tool_use = "{% for m in messages %}TOOLS {{ tools | length }} {{ m.content }}{% endfor %}"
    default = "{% for m in messages %}PLAIN {{ m.content }}{% endfor %}"
    named = [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]
    tokenizer = trained.load_trained(tokenizer_dir)
    directory = trained.write(tmp_path / "named", trained.files(tokenizer, trained.config(named)))
    ours = load_model_tokenizer(trained.files_in(directory))
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    messages = [{"role": "user", "content": "hi"}]
    for tools in (None, TOOLS):
        assert ours.render_chat(messages, tools=tools) == theirs.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
    assert ours.render_chat(messages).startswith("PLAIN")


def test_the_template_sees_special_tokens_tojson_documents_and_its_globals(tmp_path: Path, tokenizer_dir: Path) -> None:
    source = (
        "{{ bos_token | default('none') }}|{{ eos_token }}|{{ pad_token }}|{{ messages[0] | tojson(indent=2) }}|"
        "{{ documents | tojson }}|{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}|{{ dict(a=1) | tojson }}|{{ strftime_now('%Y') | length }}|"
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
        "{% generation %}G{% endgeneration %}"
    )
    tokenizer = trained.load_trained(tokenizer_dir)
    directory = trained.write(tmp_path / "globals", trained.files(tokenizer, trained.config(source)))
    ours = load_model_tokenizer(trained.files_in(directory))
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    messages = [{"role": "user", "content": 'héllo <b>"</b>'}]
    documents = [{"title": "t", "text": "東京"}]
    ours_text = ours.render_chat(messages, documents=documents)
    assert ours_text == theirs.apply_chat_template(
        messages, documents=documents, add_generation_prompt=True, tokenize=False
    )
    assert '"héllo <b>\\"</b>"' in ours_text  # tojson keeps non-ASCII and HTML characters
    assert "東京" in ours_text


def test_a_templates_own_refusal_is_a_chat_template_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    source = "{% if messages[0].role == 'system' %}{{ raise_exception('no system messages') }}{% endif %}ok"
    tokenizer = trained.load_trained(tokenizer_dir)
    ours = load_model_tokenizer(trained.files(tokenizer, trained.config(source)))
    ours.vet()  # it renders the conversations without a system message
    with pytest.raises(ChatTemplateError, match="no system messages"):
        count_chat_prompt(ours, {"messages": [{"role": "system", "content": "x"}]})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{% if messages %}{{ messages.__class__.__base__.__subclasses__() }}{% endif %}",
        "{% set ns = namespace() %}{% set ns._secret = 1 %}{{ messages[0].content }}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_a_template_reaching_outside_the_sandbox_is_refused(source: str, tokenizer_dir: Path) -> None:
    ours = load_model_tokenizer(trained.files(trained.load_trained(tokenizer_dir), trained.config(source)))
    with pytest.raises(UnsafeChatTemplate, match="outside its sandbox"):
        ours.vet()


def test_a_template_that_does_not_compile_or_renders_nothing_is_refused(tokenizer_dir: Path) -> None:
    tokenizer = trained.load_trained(tokenizer_dir)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        load_model_tokenizer(trained.files(tokenizer, trained.config("{% for %}"))).vet()
    with pytest.raises(ChatTemplateError, match="renders no conversation"):
        load_model_tokenizer(trained.files(tokenizer, trained.config("{{ raise_exception('never') }}"))).vet()
    with pytest.raises(ChatTemplateError, match="no chat template"):
        count_chat_prompt(load_model_tokenizer(trained.files(tokenizer, trained.config(None))), {"messages": []})


def test_text_prompts_and_embeddings_inputs_count_as_the_tokenizer_call_does(
    ours: ModelTokenizer, theirs: Any, tokenizer_dir: Path, tmp_path: Path
) -> None:
    texts = ["the weather in paris", "東京 café <|im_start|>"]
    assert count_text_prompt(ours, texts[0]) == len(theirs(texts[0])["input_ids"])
    assert count_text_prompt(ours, texts) == sum(len(theirs(t)["input_ids"]) for t in texts)
    assert count_text_prompt(ours, [1, 2, 3]) == 3
    assert count_embedding_input(ours, [[1, 2], [3]]) == 3
    assert count_text_prompt(ours, []) == 0
    with pytest.raises(ValueError, match="a prompt is"):
        count_text_prompt(ours, [1, "a"])
    # transformers 5 ignores the config's add_bos_token beside a tokenizer.json: so do we.
    flagged = trained.files(trained.load_trained(tokenizer_dir), trained.config(bos_token="<|endoftext|>",
                                                                                add_bos_token=True))  # fmt: skip
    directory = trained.write(tmp_path / "flag", flagged)
    assert (
        load_model_tokenizer(flagged).encode(texts[0], True)
        == transformers.AutoTokenizer.from_pretrained(str(directory))(texts[0])["input_ids"]
    )
    # A tokenizer.json whose post-processor adds BOS adds it to a text prompt, not to a chat's templated text.
    tokenizer = trained.load_trained(tokenizer_dir)
    bos_id = tokenizer.token_to_id("<|endoftext|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos_id)]
    )
    directory = trained.write(tmp_path / "bos", trained.files(tokenizer, trained.config(bos_token="<|endoftext|>")))
    with_bos = load_model_tokenizer(trained.files_in(directory))
    theirs_bos = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert with_bos.encode(texts[0], add_special_tokens=True) == theirs_bos(texts[0])["input_ids"]
    assert count_text_prompt(with_bos, texts[0]) == count_text_prompt(ours, texts[0]) + 1
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert count_chat_prompt(with_bos, body) == count_chat_prompt(ours, body)
    assert count_chat_prompt(with_bos, body) == len(
        theirs_bos.apply_chat_template(body["messages"], add_generation_prompt=True)["input_ids"]
    )


def test_completion_tokens_are_each_choices_text_and_its_end_token(ours: ModelTokenizer, theirs: Any) -> None:
    def n(text: str) -> int:
        return len(theirs(text, add_special_tokens=False)["input_ids"])

    first, second = "sunny today and tomorrow", "it will rain over london"
    assert count_completion(ours, [first, second]) == n(first) + n(second) + 2
    cut = ChoiceText(content=first, ended=False)
    assert count_completion(ours, [cut]) == n(first)
    call = ChoiceText(reasoning="the user wants weather", tool_calls=[("get_weather", '{"city": "paris"}')])
    assert count_completion(ours, [call]) == n("the user wants weather") + n("get_weather") + n('{"city": "paris"}') + 1
    assert count_completion(ours, []) == 0


def test_vocabulary_and_special_tokens_are_read_from_the_files(ours: ModelTokenizer, theirs: Any) -> None:
    assert ours.vocab_size == len(theirs)
    assert ours.eos_token == "<|im_end|>"
    assert ours.special_tokens == theirs.special_tokens_map


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    transformers.logging.set_verbosity_error()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_the_tiny_test_models_registered_files_count_as_transformers_does(name: str) -> None:
    """The files the end-to-end tests register for the llama.cpp engine's model (its trained tokenizer and
    Llama 3 style template, ``libs.devstack.tinymodel``), counted as transformers counts them."""
    model = tiny_model(0)
    ours = load_model_tokenizer(trained.files_in(model.tokenizer_json.parent))
    theirs = transformers.AutoTokenizer.from_pretrained(str(model.tokenizer_json.parent))
    messages, tools = CONVERSATIONS[name]
    body: dict[str, Any] = {"messages": messages} | ({"tools": tools} if tools else {})
    assert count_chat_prompt(ours, body) == len(hf_ids(theirs, template_messages(messages), tools, True))
