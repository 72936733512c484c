"""What a request costs, in integer micro-credits (1 credit = 1,000,000 micro-credits). One function for
everyone who prices: the adapter (``usage.cost`` in responses), the router (reservations) and billing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from libs.contracts.common import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint

MICRO = 1_000_000
BPS = 10_000


class Cost(NamedTuple):
    """A cost split: what the client pays is what the hoster earns plus the platform's fee."""

    client: int
    hoster: int
    fee: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_of(prompt_tokens: int, completion_tokens: int, input_price: int, output_price: int, fee_bps: int) -> Cost:
    """Cost of a usage at the hoster's prices (micro-credits per million tokens) plus ``fee_bps`` basis points.

    Rounded up to the micro-credit, so a request is never free because it was small.
    """
    hoster = _ceil_div(prompt_tokens * input_price + completion_tokens * output_price, MICRO)
    fee = _ceil_div(hoster * fee_bps, BPS)
    return Cost(hoster + fee, hoster, fee)


def client_price(price: int, fee_bps: int) -> int:
    """What the client pays per million tokens at a hoster's ``price`` (both in micro-credits per million
    tokens): the price plus the platform fee, rounded up as ``cost_of`` rounds."""
    return price + _ceil_div(price * fee_bps, BPS)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size (~4 characters a token, a token id one token, at least 1) for reservations and for
    upstreams that report no usage: a chat body's messages, a text completion's ``prompt`` or the ``input``
    to embed."""
    size = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    tokens = 0
    for field in ("prompt", "input"):
        value = body.get(field)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                size += len(item)
            elif isinstance(item, int):
                tokens += 1
            elif isinstance(item, list):
                tokens += len(item)
    return max(1, size // 4 + tokens)


# OpenAI's (and vLLM's) completion limit for a text completion that sets none.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def requested_max_tokens(body: dict[str, Any], default: int, endpoint: Endpoint = CHAT) -> int:
    """The completion budget per choice the client set (``max_completion_tokens`` wins over ``max_tokens``),
    else ``default`` for a chat completion, 16 for a text completion (as OpenAI); 0 for embeddings."""
    if endpoint == EMBEDDINGS:
        return 0
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return COMPLETIONS_DEFAULT_MAX_TOKENS if endpoint == COMPLETIONS else default


def input_count(value: Any) -> int:
    """How many embeddings an ``input`` asks for: one per string or token list, one for a single string or
    a single list of token ids."""
    if isinstance(value, list) and value and isinstance(value[0], (str, list)):
        return len(value)
    return 1


def generated_choices(body: dict[str, Any], endpoint: Endpoint = CHAT) -> int:
    """How many choices the hoster generates: ``n``; for a text completion, ``best_of`` when larger, for each
    prompt when ``prompt`` is a list of prompts (a chat body's unknown ``best_of`` counts for nothing)."""
    n = body.get("n")
    choices = n if isinstance(n, int) and n > 0 else 1
    if endpoint != COMPLETIONS:
        return choices
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > choices:
        choices = best_of
    return choices * input_count(body.get("prompt"))


# Tokens an image part counts for in a rate limit (OpenAI's count of a high-detail 1024x1024 image: four 512-pixel
# tiles at 170 tokens and 85 for the whole); the gateway does not fetch or measure the image to know better.
IMAGE_TOKENS = 765


def rate_limited_tokens(body: dict[str, Any], max_tokens: int, endpoint: Endpoint = CHAT) -> int:
    """What a request counts for against a key's tokens per minute: its prompt estimate over every input
    (``estimate_prompt_tokens``'s text and prompts, plus the tool and function definitions and the calls in
    its messages at ~4 characters a token, and ``IMAGE_TOKENS`` an image part) and ``max_tokens`` for each
    choice it generates (``generated_choices``: ``n``, ``best_of``, a list of prompts)."""
    size = 0
    images = 0
    for field in ("tools", "functions"):
        if isinstance(body.get(field), list):
            size += _json_size(body[field])
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        for field in ("tool_calls", "function_call"):
            if message.get(field):
                size += _json_size(message[field])
        content = message.get("content")
        if isinstance(content, list):
            images += sum(1 for part in content if isinstance(part, dict) and part.get("type") in IMAGE_PARTS)
    prompt = estimate_prompt_tokens(body) + size // 4 + images * IMAGE_TOKENS
    return prompt + max_tokens * generated_choices(body, endpoint)


# The content part types that carry an image (OpenAI's chat and responses shapes).
IMAGE_PARTS = ("image_url", "input_image")


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON (its ``repr``'s when orjson cannot write it: an integer past 64 bits)."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(repr(value))


def to_credits(micro: int) -> float:
    """Micro-credits as credits, for display."""
    return micro / MICRO


# Tokens a chat template may add around a prompt's own bytes (role markers, separators), for the prompt bound.
TEMPLATE_TOKENS = 64
# How far a hoster's claim may exceed the network's own count (the model's registered tokenizer) before it is
# a discrepancy: a BOS token or another special token an engine adds on its own, a re-encoding that splits a
# word otherwise. Measured against llama.cpp (tests/e2e/test_counted_usage.py): 0-1 per request.
COUNT_TOLERANCE = 4


def held_to_count(claimed: int, counted: int | None, estimated: bool) -> tuple[int, bool]:
    """What is billed of a hoster's claimed token count when the network counted the same tokens: the lower
    of the two (an estimated claim, the hoster's engine reported none, is no claim: the count); and whether
    the claim exceeded the count beyond ``COUNT_TOLERANCE`` (a discrepancy)."""
    if counted is None:
        return claimed, False
    if estimated:
        return counted, False
    return min(claimed, counted), claimed > counted + COUNT_TOLERANCE


def breaks_bound(claimed: int, bound: int, counted: int | None, estimated: bool) -> bool:
    """Whether a claimed token count past the request's bound for it is a discrepancy (it is billed at the
    bound either way): always, unless the network counted the same tokens and the claim is only an estimate
    (the adapter's, when the engine reported none: the count replaces it) or within ``COUNT_TOLERANCE`` of the
    count. Then the client's own limit cut the bill, not a lie: llama.cpp generates past ``max_tokens`` to
    finish a character of several bytes, and the text the client received holds those tokens."""
    if 0 <= claimed <= bound:
        return False
    if counted is None:
        return True
    return not (estimated or 0 <= claimed <= counted + COUNT_TOLERANCE)


@dataclass(frozen=True, slots=True)
class UsageBounds:
    """The most a request can have used, whatever its hoster says: every prompt token comes from the bytes
    of the request's body (``prompt`` = its JSON bytes + ``TEMPLATE_TOKENS``), and no hoster may generate more
    than the client allowed (``completion`` = max_completion_tokens, else max_tokens, else the default cap,
    times ``n``)."""

    prompt: int
    completion: int

    @classmethod
    def of(
        cls, body: dict[str, Any], body_bytes: int, default_max_tokens: int, endpoint: Endpoint = CHAT
    ) -> UsageBounds:
        limit = requested_max_tokens(body, default_max_tokens, endpoint)
        return cls(body_bytes + TEMPLATE_TOKENS, limit * generated_choices(body, endpoint))

    def with_prompt_count(self, counted: int) -> UsageBounds:
        """The bounds of a request whose prompt the network counted with the model's own tokenizer: that
        count, plus ``COUNT_TOLERANCE`` (never past the byte bound)."""
        return UsageBounds(min(self.prompt, counted + COUNT_TOLERANCE), self.completion)

    def with_text(self, text_bytes: int, choices: int) -> UsageBounds:
        """Also bounded by the text the client received: a token is at least one byte of text (byte-level
        tokenizers), plus one end-of-sequence token per choice."""
        return UsageBounds(self.prompt, min(self.completion, text_bytes + choices))

    def bound(self, prompt_tokens: int, completion_tokens: int) -> tuple[int, int, str | None]:
        """The counts clamped into [0, bound], and what was wrong with the reported ones (``None``: nothing)."""
        prompt = min(max(prompt_tokens, 0), self.prompt)
        completion = min(max(completion_tokens, 0), self.completion)
        if (prompt, completion) == (prompt_tokens, completion_tokens):
            return prompt, completion, None
        return (
            prompt,
            completion,
            (
                f"reported {prompt_tokens} prompt and {completion_tokens} completion tokens; "
                f"billed {prompt} and {completion} (bounds: {self.prompt} prompt, {self.completion} completion)"
            ),
        )


def detail_count(value: Any, parent: int) -> int | None:
    """A detail count a hoster reported (cached prompt tokens, reasoning tokens), held to ``[0, parent]``: a
    part never exceeds its whole. ``None`` when it is not a whole number at all (the detail is left out)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return max(0, min(value, parent))


# The usage details passed on from a hoster's report: (section, field, which count bounds it).
USAGE_DETAILS = (
    ("prompt_tokens_details", "cached_tokens", "prompt"),
    ("completion_tokens_details", "reasoning_tokens", "completion"),
)


def usage_details(reported: Any, prompt_tokens: int, completion_tokens: int) -> dict[str, dict[str, int]]:
    """The details of a hoster's ``usage`` report the client is shown, each held to its parent count (cached
    tokens to ``prompt_tokens``, reasoning tokens to ``completion_tokens``, both already bounded); any other
    detail, and anything that is not a count, is dropped."""
    if not isinstance(reported, dict):
        return {}
    parents = {"prompt": prompt_tokens, "completion": completion_tokens}
    details: dict[str, dict[str, int]] = {}
    for section, name, parent in USAGE_DETAILS:
        part = reported.get(section)
        count = detail_count(part.get(name), parents[parent]) if isinstance(part, dict) else None
        if count is not None:
            details[section] = {name: count}
    return details


def client_usage(
    prompt_tokens: int,
    completion_tokens: int,
    reported: Any,
    input_price: int,
    output_price: int,
    fee_bps: int,
    estimated: bool = False,
) -> dict[str, Any]:
    """``usage`` as the client sees it, from counts already held to the request's bounds: OpenAI's counts,
    the details the hoster reported (``usage_details``), ``cost`` in credits as OpenRouter reports it with
    ``cost_details.upstream_inference_cost`` (the hoster's share of it, the rest is the platform fee), and
    ``estimated`` when the hoster reported no usage and the gateway counted. The adapter writes it and the
    ingress checks every usage a hoster's frames carry against it."""
    cost = cost_of(prompt_tokens, completion_tokens, input_price, output_price, fee_bps)
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        **usage_details(reported, prompt_tokens, completion_tokens),
        "cost": to_credits(cost.client),
        "cost_details": {"upstream_inference_cost": to_credits(cost.hoster)},
    }
    if estimated:
        body["estimated"] = True
    return body
