"""The simulator's domain: how it serves a request and the deterministic reply to it.

No I/O here. The reply to a prompt is always the same words, so tests and benchmarks can compare runs: each of
the ``n`` choices is seeded with the prompt and its index, and tool calls, JSON content, reasoning and log
probabilities are derived the same way. OpenAI's response shapes for a reply are in ``responses``.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from services.simulator.chat_request import (
    AllowedToolsChoice,
    ChatCompletionRequest,
    Fault,
    FunctionDefinition,
    NamedCustomChoice,
    NamedFunctionChoice,
    ResponseFormat,
    SimulatorOverride,
)
from services.simulator.schema_example import schema_example

FinishReason = Literal["stop", "length", "tool_calls"]

WORDS: tuple[str, ...] = (
    "the", "model", "answers", "with", "simulated", "tokens", "while", "gateway", "routes", "every",
    "request", "to", "a", "hoster", "that", "streams", "words", "back", "in", "order", "and", "counts",
    "usage", "for", "billing", "so", "tests", "see", "steady", "replies", "under", "load", "from", "many",
    "clients", "at", "once", "when", "network", "is", "fast", "or", "slow", "each", "chunk", "arrives",
    "as", "plain", "text", "of", "this", "small", "language", "without", "any", "real", "weights", "behind",
    "it", "compute", "share", "sample", "latency", "budget",
)  # fmt: skip

REASONING_TOKENS: dict[str, int] = {"none": 0, "minimal": 2, "low": 4, "medium": 8, "high": 12, "xhigh": 12, "max": 16}
# Streams send a tool call's arguments in pieces of this many characters, as OpenAI's run of small deltas.
ARGUMENT_PIECE_CHARS = 8
# Each string of a JSON reply or of tool-call arguments is the next this many words of the reply.
STRING_WORDS = 3
ARGUMENT_WORDS = 12
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# Token-sized pieces of JSON text: a word or a run of punctuation, with the whitespace before it.
_JSON_PIECE = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulator serves one request: timing, reply length and the fault to inject.

    ``reasoning_tokens`` None lets the request's ``reasoning_effort`` decide how long the model thinks.
    """

    reply_tokens: int
    ttft_ms: float
    tokens_per_second: float
    fault: Fault
    fault_status: int
    fault_after_tokens: int
    reasoning_tokens: int | None = None
    # Prompt tokens reported as cached (``usage.prompt_tokens_details.cached_tokens``), as given.
    cached_tokens: int = 0
    # Size of the ``endless_line`` and ``huge_error`` faults (0: for ever); choices of ``many_choices``.
    fault_bytes: int = 0
    fault_choices: int = 1000
    # Reported usage is the true usage times this (a lying hoster).
    usage_factor: float = 1.0

    @property
    def ttft_s(self) -> float:
        """Time to first token in seconds."""
        return self.ttft_ms / 1000

    @property
    def token_interval_s(self) -> float:
        """Seconds between two tokens; 0 sends them back to back."""
        return 1 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    def generation_s(self, tokens: int) -> float:
        """How long ``tokens`` take after the first one, as a stream paces them."""
        return max(tokens - 1, 0) * self.token_interval_s


def resolve_behaviour(
    defaults: Behaviour, fault_rate: float, override: SimulatorOverride | None, roll: float
) -> Behaviour:
    """The behaviour for one request: the configured one, its fault kept only when ``roll < fault_rate``.

    ``roll`` is a uniform draw in [0, 1). A per-request override replaces the fields it sets, and a fault it
    names is forced.
    """
    fault: Fault = defaults.fault if roll < fault_rate else "none"
    if override is None:
        return defaults if fault == defaults.fault else replace(defaults, fault=fault)
    return replace(defaults, **{"fault": fault, **override.model_dump(exclude_none=True)})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the simulated model makes; ``arguments`` is a JSON object as a string."""

    id: str
    name: str
    arguments: str

    @property
    def tokens(self) -> int:
        """Completion tokens the call counts: about four characters each, at least one."""
        return max(1, len(self.arguments) // 4)

    def argument_pieces(self) -> list[str]:
        """The arguments as a stream sends them, in pieces of ``ARGUMENT_PIECE_CHARS`` characters."""
        size = ARGUMENT_PIECE_CHARS
        return [self.arguments[start : start + size] for start in range(0, len(self.arguments), size)]


@dataclass(frozen=True, slots=True)
class Choice:
    """One of the ``n`` answers: reasoning tokens, then either content tokens or tool calls.

    ``logprobs`` has one entry per content token when the request asked for them, and is None otherwise.
    """

    index: int
    reasoning: list[str]
    tokens: list[str]
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    logprobs: list[dict[str, Any]] | None = None

    @property
    def content(self) -> str | None:
        """The whole content; None for a choice that calls tools."""
        return None if self.tool_calls else "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        """Reasoning, content and tool-call tokens."""
        return len(self.reasoning) + len(self.tokens) + sum(call.tokens for call in self.tool_calls)

    @property
    def steps(self) -> int:
        """How many token-paced chunks a stream sends for this choice."""
        calls = sum(1 + len(call.argument_pieces()) for call in self.tool_calls)
        return len(self.reasoning) + len(self.tokens) + calls


@dataclass(frozen=True, slots=True)
class Reply:
    """The completion the simulator will send for one request."""

    choices: list[Choice]
    prompt_tokens: int
    # Reported usage is the true usage times this (a lying hoster, for the gateway's usage bounds).
    usage_factor: float = 1.0
    # Reported as ``prompt_tokens_details.cached_tokens``, whatever the prompt (it may lie too).
    cached_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        """Completion tokens over all choices, reasoning included."""
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        """Reasoning tokens over all choices."""
        return sum(len(choice.reasoning) for choice in self.choices)

    @property
    def steps(self) -> int:
        """How many token-paced steps a stream takes: the choices advance together."""
        return max(choice.steps for choice in self.choices)

    def usage(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object for this reply."""
        prompt = round(self.prompt_tokens * self.usage_factor)
        completion = round(self.completion_tokens * self.usage_factor)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of each message: its string content, or the ``text`` parts of a content list."""
    texts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return texts


def estimate_prompt_tokens(texts: list[str]) -> int:
    """About four characters per token, as OpenAI's rule of thumb; never less than one."""
    return max(1, sum(len(text) for text in texts) // 4)


def reply_tokens(texts: list[str], count: int, choice_index: int = 0, purpose: str = "") -> list[str]:
    """``count`` words chosen by a generator seeded with the prompt; every word but the first has a space.

    The same prompt always gets the same words, and a shorter reply is a prefix of a longer one. Each choice
    index and each ``purpose`` (reasoning, tool arguments) gets words of its own.
    """
    words = random.Random(_seed(texts, choice_index, purpose)).choices(WORDS, k=count)
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def plan_reply(request: ChatCompletionRequest, reply_length: int, *, reasoning_tokens: int | None = None) -> Reply:
    """The reply: ``n`` choices of ``reply_length`` content tokens, or of tool calls when tools are called.

    ``reasoning_tokens`` (else the request's ``reasoning_effort``) is how long each choice thinks first. The
    client's token cap covers reasoning and content and cuts with ``finish_reason`` "length"; a stop sequence
    cuts the content before it.
    """
    texts = message_texts(request.messages)
    if reasoning_tokens is None:
        reasoning_tokens = REASONING_TOKENS[request.reasoning_effort or "none"]
    functions = functions_to_call(request)
    choices = [
        _plan_choice(request, texts, index, reply_length, reasoning_tokens, functions)
        for index in range(request.n or 1)
    ]
    return Reply(choices, estimate_prompt_tokens(texts))


def functions_to_call(request: ChatCompletionRequest) -> list[FunctionDefinition]:
    """The functions the simulated model calls, as ``tool_choice`` says.

    A named function is called, and "required" calls the first tool, whatever the last message is: a client
    that forces a tool (instructor's retries, an agent's forced step) sends a tool result last and still needs
    a call. "auto" (the default) calls the first two when parallel tool calls are allowed, else the first,
    but answers a tool result in text, so that an agent's tool loop reaches a final answer.
    """
    choice = request.tool_choice
    if not request.tools or choice == "none" or isinstance(choice, NamedCustomChoice):
        return []
    functions = request.functions
    if isinstance(choice, NamedFunctionChoice):
        return [function for function in functions if function.name == choice.function.name][:1]
    mode = choice or "auto"
    if isinstance(choice, AllowedToolsChoice):
        allowed = [tool.get("function") for tool in choice.allowed_tools.tools]
        names = {function.get("name") for function in allowed if isinstance(function, dict)}
        functions = [function for function in functions if function.name in names]
        mode = choice.allowed_tools.mode
    if mode == "required":
        return functions[:1]
    if request.messages[-1].get("role") == "tool":
        return []
    return functions[: 1 if request.parallel_tool_calls is False else 2]


def _plan_choice(
    request: ChatCompletionRequest,
    texts: list[str],
    index: int,
    reply_length: int,
    reasoning_tokens: int,
    functions: list[FunctionDefinition],
) -> Choice:
    cap = request.token_cap
    thinking = reasoning_tokens if cap is None else min(reasoning_tokens, cap)
    reasoning = reply_tokens(texts, thinking, index, "reasoning")
    if functions:
        calls = tuple(_tool_call(texts, index, position, function) for position, function in enumerate(functions))
        return Choice(index, reasoning, [], calls, "tool_calls", [] if request.logprobs else None)
    budget = None if cap is None else cap - thinking
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        pieces = _JSON_PIECE.findall(_json_content(response_format, texts, index, reply_length))
        wanted, tokens = len(pieces), pieces[:budget]
    else:
        wanted = reply_length
        tokens = reply_tokens(texts, wanted if budget is None else min(wanted, budget), index)
    finish_reason: FinishReason = "length" if thinking < reasoning_tokens or len(tokens) < wanted else "stop"
    stops = request.stop_sequences
    if stops and cut_at_stop(tokens, stops):
        finish_reason = "stop"
    if not request.logprobs:
        return Choice(index, reasoning, tokens, (), finish_reason)
    logprobs = token_logprobs(tokens, _seed(texts, index, "logprobs"), request.top_logprobs or 0)
    return Choice(index, reasoning, tokens, (), finish_reason, logprobs)


def _json_content(response_format: ResponseFormat, texts: list[str], index: int, reply_length: int) -> str:
    """The content in JSON mode: the reply's words as ``{"answer": ...}``, or a value satisfying the schema."""
    words = [token.strip() for token in reply_tokens(texts, reply_length, index)]
    if response_format.json_schema is None:
        return orjson.dumps({"answer": " ".join(words)}).decode()
    return orjson.dumps(schema_example(response_format.json_schema.schema_, _word_source(words))).decode()


def _tool_call(texts: list[str], index: int, position: int, function: FunctionDefinition) -> ToolCall:
    """Call ``function`` with arguments satisfying its parameters; the id is a hash of the call."""
    words = [token.strip() for token in reply_tokens(texts, ARGUMENT_WORDS, index, f"call{position}")]
    arguments = orjson.dumps(schema_example(function.parameters or _NO_PARAMETERS, _word_source(words))).decode()
    digest = hashlib.blake2b(f"{_seed(texts, index, f'call{position}')}:{function.name}".encode(), digest_size=12)
    return ToolCall("call_" + digest.hexdigest(), function.name, arguments)


def _word_source(words: list[str]) -> Callable[[], str]:
    """The next ``STRING_WORDS`` of ``words`` at each call, round and round."""
    if not words:
        return lambda: ""
    cycle = itertools.cycle(words)
    return lambda: " ".join(next(cycle) for _ in range(STRING_WORDS))


def cut_at_stop(tokens: list[str], stops: list[str]) -> bool:
    """Cut ``tokens`` in place before the first stop sequence in their text; True if one was found.

    A token the stop sequence starts inside keeps the part before it.
    """
    text = "".join(tokens)
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    if not found:
        return False
    at, length = min(found), 0
    for position, token in enumerate(tokens):
        if length + len(token) > at:
            del tokens[position:]
            if at > length:
                tokens.append(token[: at - length])
            break
        length += len(token)
    return True


def token_logprobs(tokens: list[str], seed: int, top: int) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content``: per token its log probability and ``top`` less likely alternatives.

    The values come from a generator seeded with ``seed``. Alternatives are other words, with the token's
    leading whitespace, each less likely than the one before.
    """
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = []
    for token in tokens:
        logprob = -round(rng.uniform(0.001, 0.7), 6)
        alternatives: list[dict[str, Any]] = []
        if top:
            word = token.lstrip()
            space = token[: len(token) - len(word)]
            others = [other for other in rng.sample(WORDS, top + 1) if other != word.rstrip()][:top]
            alternative_logprob = logprob
            for other in others:
                alternative_logprob = round(alternative_logprob - rng.uniform(0.5, 2.5), 6)
                alternative = space + other
                alternatives.append(
                    {"token": alternative, "logprob": alternative_logprob, "bytes": list(alternative.encode())}
                )
        entries.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives}
        )
    return entries


def _seed(texts: list[str], choice_index: int, purpose: str) -> int:
    """A seed from the prompt; choice 0 without a purpose keeps the seed replies have always had."""
    prompt = "\x1e".join(texts)
    if choice_index or purpose:
        prompt += f"\x1f{choice_index}\x1f{purpose}"
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
