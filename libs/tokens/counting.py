"""Token counts of OpenAI requests and answers, as the model's own tokenizer counts them.

The rules, each where an OpenAI-compatible server of open models (vLLM) puts it:

- a chat request's prompt is its messages rendered by the model's chat template with a generation prompt,
  encoded with ``add_special_tokens=False`` (transformers' ``apply_chat_template`` encodes the rendered text so:
  the template writes its own BOS);
- a text completion's prompt, and an embeddings input, is each string encoded with ``add_special_tokens=True``
  (the tokenizer's BOS/EOS as its post-processor adds them), and token ids count as given;
- a completion is the text of each choice (content, reasoning, refusal, each tool call's name and arguments,
  each part encoded on its own), plus one end-of-sequence token for each choice that ended on one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libs.tokens.model import ModelTokenizer

# Names a request's ``chat_template_kwargs`` may not set: they are the conversation itself.
_RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


def _text_of(content: Any) -> Any:
    """A message's content as a text-only chat template reads it: a string as it is; a list of parts as the
    text of its ``text`` (and ``refusal``) parts joined by newlines, as vLLM passes parts to a template that
    reads content as a string. Images, audio and files contribute nothing here."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if isinstance(part, Mapping):
            text = part.get("text") if part.get("type", "text") == "text" else part.get("refusal")
            if isinstance(text, str):
                texts.append(text)
    return "\n".join(texts)


def _tool_call_for_template(call: Any) -> Any:
    """A tool call with its JSON ``arguments`` string read as the object it holds: templates write arguments
    with ``tojson`` (vLLM parses them so too); arguments that are not a JSON object stay text."""
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        return call
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as a Hugging Face chat template takes them (``_text_of``, ``_tool_call_for_template``);
    every other field (``name``, ``tool_call_id``, ``reasoning_content``) passes as it is."""
    converted = []
    for message in messages:
        item = dict(message)
        if "content" in item:
            item["content"] = _text_of(item["content"])
        if isinstance(item.get("tool_calls"), list):
            item["tool_calls"] = [_tool_call_for_template(c) for c in item["tool_calls"]]
        converted.append(item)
    return converted


def render_chat_prompt(model: ModelTokenizer, body: Mapping[str, Any]) -> str:
    """The prompt text the model is given for chat request ``body`` (an OpenAI ``/v1/chat/completions`` body):
    its messages and tools through the model's chat template with a generation prompt, and the request's
    ``chat_template_kwargs`` (vLLM's extension, e.g. ``enable_thinking``) as template variables.
    ``ChatTemplateError`` when the model has no template or its template refuses the conversation."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("a chat request has a list of messages")
    tools = body.get("tools")
    extra = body.get("chat_template_kwargs")
    variables = (
        {k: v for k, v in extra.items() if k not in _RESERVED_TEMPLATE_VARIABLES} if isinstance(extra, Mapping) else {}
    )
    return model.render_chat(
        template_messages(messages), tools=tools if isinstance(tools, list) else None, add_generation_prompt=True,
        **variables,
    )  # fmt: skip


def count_chat_prompt(model: ModelTokenizer, body: Mapping[str, Any]) -> int:
    """Prompt tokens of chat request ``body``: ``render_chat_prompt`` encoded without added special tokens, as
    transformers' ``apply_chat_template(..., add_generation_prompt=True)`` tokenizes it. Raises
    ``ChatTemplateError`` (no template, or it refused the conversation) and ``ValueError`` (no messages)."""
    return model.count([render_chat_prompt(model, body)], add_special_tokens=False)


def count_text_prompt(model: ModelTokenizer, prompt: Any) -> int:
    """Prompt tokens of a text completion's ``prompt`` (``/v1/completions``): a string, a list of strings
    (each encoded with the tokenizer's own special tokens, as vLLM and transformers' tokenizer call do), a list
    of token ids or a list of such lists (counted as given). ``ValueError`` for anything else."""
    if isinstance(prompt, str):
        return model.count([prompt], add_special_tokens=True)
    if not isinstance(prompt, list):
        raise ValueError("a prompt is a string, strings, token ids or lists of token ids")
    if all(isinstance(p, str) for p in prompt):
        return model.count(prompt, add_special_tokens=True)
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return len(prompt)
    if all(isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt):
        return sum(len(p) for p in prompt)
    raise ValueError("a prompt is a string, strings, token ids or lists of token ids")


def count_embedding_input(model: ModelTokenizer, input: Any) -> int:
    """Input tokens of an embeddings request's ``input``: the same shapes and rules as ``count_text_prompt``
    (vLLM encodes embeddings inputs with the tokenizer's special tokens too)."""
    return count_text_prompt(model, input)


@dataclass(frozen=True)
class ChoiceText:
    """What one choice generated, as relayed to the client. ``tool_calls``: ``(name, arguments)`` pairs.
    ``ended``: the model emitted its end-of-sequence token (``finish_reason`` ``stop`` or ``tool_calls``); not
    for a choice cut at its token limit (``length``)."""

    content: str = ""
    reasoning: str = ""
    refusal: str = ""
    tool_calls: Sequence[tuple[str, str]] = ()
    ended: bool = True

    def texts(self) -> list[str]:
        """Every piece of text of the choice, each counted on its own."""
        pieces = [self.content, self.reasoning, self.refusal]
        for name, arguments in self.tool_calls:
            pieces += [name, arguments]
        return [p for p in pieces if p]


def count_completion(model: ModelTokenizer, texts_per_choice: Iterable[str | ChoiceText]) -> int:
    """Completion tokens of an answer: each choice's text (a string is a choice's content that ended on an end
    token) encoded without special tokens, plus one token for each choice that ended (its EOS). A model may
    have generated its text in other tokens than this re-encoding picks (tokenization is not unique), so this
    is the count of the text, which is what was delivered."""
    total = 0
    pieces: list[str] = []
    for choice in texts_per_choice:
        if isinstance(choice, str):
            choice = ChoiceText(content=choice)
        pieces += choice.texts()
        total += 1 if choice.ended else 0
    return total + model.count(pieces, add_special_tokens=False)
