"""The simulator's text completions and embeddings, for the gateway's other endpoints.

A text completion is planned as the chat completion of one user message holding the prompt (the same words,
stops, limits and logprobs), one plan per prompt when ``prompt`` is a list, and its chunks are reshaped into
``text_completion`` objects. Embeddings are deterministic: the same input always gets the same unit vector.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

import orjson

from services.simulator.chat_request import ChatCompletionRequest
from services.simulator.responses import SYSTEM_FINGERPRINT, CompletionMeta
from services.simulator.service import Choice, Reply, plan_reply

# Vector length of a simulated embedding when the request sets no ``dimensions``.
EMBEDDING_DIMENSIONS = 32


def prompts_of(prompt: Any) -> list[str]:
    """Each prompt of a text completion as text (token ids are spelled as numbers)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [" ".join(str(p) for p in prompt)]
    if isinstance(prompt, list):
        return [p if isinstance(p, str) else " ".join(str(t) for t in p) for p in prompt]
    return [""]


def chat_request_for(payload: dict[str, Any], prompt: str) -> ChatCompletionRequest:
    """The chat request a text completion of ``prompt`` is planned as."""
    logprobs = payload.get("logprobs")
    return ChatCompletionRequest.model_validate(
        {
            "model": payload["model"],
            "messages": [{"role": "user", "content": prompt or " "}],
            "stream": bool(payload.get("stream")),
            "stream_options": payload.get("stream_options"),
            "max_tokens": payload.get("max_tokens") or 16,
            "n": payload.get("n"),
            "stop": payload.get("stop"),
            "logprobs": isinstance(logprobs, int) or None,
            "top_logprobs": logprobs if isinstance(logprobs, int) else None,
            "simulator": payload.get("simulator"),
        }
    )


def plan_text(payload: dict[str, Any], reply_length: int) -> tuple[list[str], list[Reply]]:
    """The prompts and one reply per prompt (``n`` choices each)."""
    prompts = prompts_of(payload.get("prompt"))
    return prompts, [plan_reply(chat_request_for(payload, prompt), reply_length) for prompt in prompts]


def _text_logprobs(choice: Choice, offset: int) -> dict[str, Any] | None:
    if choice.logprobs is None:
        return None
    offsets = []
    for entry in choice.logprobs:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in choice.logprobs],
        "token_logprobs": [e["logprob"] for e in choice.logprobs],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in choice.logprobs],
        "text_offset": offsets,
    }


def text_choices(payload: dict[str, Any], prompts: list[str], replies: list[Reply]) -> list[dict[str, Any]]:
    """Every choice whole: prompt ``i``'s choices are numbered from ``i * n`` (as OpenAI numbers them)."""
    echo = bool(payload.get("echo"))
    choices = []
    for position, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        for choice in reply.choices:
            lead = prompt if echo else ""
            choices.append(
                {
                    "index": position * len(reply.choices) + choice.index,
                    "text": lead + "".join(choice.tokens),
                    "logprobs": _text_logprobs(choice, len(lead)),
                    "finish_reason": choice.finish_reason,
                }
            )
    return choices


def text_usage(replies: list[Reply]) -> dict[str, Any]:
    """Usage over every prompt's reply."""
    prompt = sum(round(r.prompt_tokens * r.usage_factor) for r in replies)
    completion = sum(round(r.completion_tokens * r.usage_factor) for r in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def text_completion(meta: CompletionMeta, payload: dict[str, Any], prompts: list[str], replies: list[Reply]) -> bytes:
    """A whole ``text_completion``."""
    return orjson.dumps(
        {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": text_choices(payload, prompts, replies),
            "usage": text_usage(replies),
        }
    )


def text_events(meta: CompletionMeta, payload: dict[str, Any], prompts: list[str], replies: list[Reply]) -> bytes:
    """A whole stream of ``text_completion`` events: a chunk per token of each choice, then each choice's
    finish, the usage when ``stream_options.include_usage`` asked for it, and ``[DONE]``."""
    events = []

    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
        chunk: dict[str, Any] = {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")

    for whole in text_choices(payload, prompts, replies):
        logprobs = whole["logprobs"]
        tokens = logprobs["tokens"] if logprobs else _split(whole["text"])
        lead = len(whole["text"]) - len("".join(tokens))
        if lead:
            event([{"index": whole["index"], "text": whole["text"][:lead], "logprobs": None, "finish_reason": None}])
        for k, token in enumerate(tokens):
            part = None
            if logprobs:
                part = {key: [logprobs[key][k]] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
            event([{"index": whole["index"], "text": token, "logprobs": part, "finish_reason": None}])
        event([{"index": whole["index"], "text": "", "logprobs": None, "finish_reason": whole["finish_reason"]}])
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        event([], text_usage(replies))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _split(text: str) -> list[str]:
    """Text back into its word tokens (every word but the first carries its leading space)."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if text else []


def inputs_of(value: Any) -> list[str]:
    """Each input to embed, as a string key (token ids spelled out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [orjson.dumps(value).decode()]
    if isinstance(value, list):
        return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
    return []


def embedding(text: str, dimensions: int) -> list[float]:
    """The unit vector of ``text``: seeded by its SHA-256, so always the same for the same input."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 7) for x in vector]


def embeddings(payload: dict[str, Any], usage_factor: float = 1.0) -> bytes:
    """A ``CreateEmbeddingResponse`` (floats; the simulator answers ``base64`` too, as OpenAI does)."""
    dimensions = payload.get("dimensions")
    width = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBEDDING_DIMENSIONS
    inputs = inputs_of(payload.get("input"))
    tokens = sum(max(1, len(text) // 4) for text in inputs)
    data = []
    for index, text in enumerate(inputs):
        vector: list[float] | str = embedding(text, width)
        if payload.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{width}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    reported = round(tokens * usage_factor)
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": payload.get("model"),
            "usage": {"prompt_tokens": reported, "total_tokens": reported},
        }
    )
