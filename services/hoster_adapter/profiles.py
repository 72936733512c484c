"""Upstream profiles: what each kind of OpenAI-compatible server accepts, and under which names.

A parameter the upstream does not support is dropped (and reported, so the routing record shows it); the
router skips such hosters altogether for a client that sets ``require_parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from libs.contracts.common import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint

ProfileName = Literal["openai", "vllm", "llamacpp", "ollama", "comput3", "generalcompute", "naga"]

# Always sent: what a request to each endpoint is (a text completion's own parameters included: an upstream
# that serves /v1/completions takes them).
ESSENTIAL = frozenset({"model", "messages", "stream"})
COMPLETION_ESSENTIAL = frozenset({"model", "prompt", "stream", "echo", "suffix", "best_of", "logprobs"})
# What an embedding request carries to a server with a fixed parameter list (one that takes anything gets the
# client's whole body); vectors are always asked for as floats (see ``embeddings_body``).
EMBEDDING_FIELDS = frozenset({"input", "dimensions", "user"})
# The completion limit's two names: never passed through as the client wrote them; the limit the request's
# reservation was priced on is sent instead, under the name the upstream reads.
LIMITS = frozenset({"max_tokens", "max_completion_tokens"})


@dataclass(frozen=True)
class UpstreamProfile:
    """How to speak to one kind of upstream server."""

    name: ProfileName
    # Parameters the upstream takes (besides the essentials); ``None``: everything, unknown fields too.
    supported: frozenset[str] | None
    # The client's name -> the upstream's name, for parameters it knows under another name.
    renames: dict[str, str] = field(default_factory=dict)
    # Whether it reports usage in a stream when asked with ``stream_options.include_usage``.
    stream_usage: bool = True
    # The name under which it reads the completion limit; ``None``: the one the client used (OpenAI's
    # reasoning models take only ``max_completion_tokens``), ``max_tokens`` when it used none.
    limit_name: str | None = "max_tokens"

    def accepts(self, parameter: str) -> bool:
        """Whether a client's parameter reaches this upstream (as itself or renamed)."""
        return (
            parameter in ESSENTIAL or self.supported is None or parameter in self.supported or parameter in self.renames
        )

    def prepare(
        self, body: dict[str, Any], upstream_model: str, max_tokens: int, endpoint: Endpoint = CHAT
    ) -> tuple[dict[str, Any], list[str]]:
        """The upstream's request body for a client's ``body`` sent to ``endpoint``, with the completion limit
        ``max_tokens`` (the one the reservation was priced on), and the parameters it had to drop."""
        if endpoint == EMBEDDINGS:
            takes = set(body) if self.supported is None else EMBEDDING_FIELDS
            dropped = sorted(set(body) - takes - {"model", "encoding_format"})
            embed = {key: value for key, value in body.items() if key in takes}
            return embed | {"model": upstream_model, "encoding_format": "float"}, dropped
        essential = COMPLETION_ESSENTIAL if endpoint == COMPLETIONS else ESSENTIAL
        prepared: dict[str, Any] = {}
        dropped = []
        for key, value in body.items():
            if key in LIMITS:
                continue
            if key not in essential and not self.accepts(key):
                dropped.append(key)
                continue
            target = self.renames.get(key, key)
            if target in prepared and target != key:
                continue  # both names were sent: the upstream's own name wins
            prepared[target] = value
        limit_name = "max_tokens" if endpoint == COMPLETIONS else self.limit_name  # the legacy API has one name
        if limit_name is None:
            limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        prepared[limit_name] = max_tokens
        prepared["model"] = upstream_model
        prepared["stream"] = True
        if self.stream_usage:
            prepared["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            prepared.pop("stream_options", None)
        return prepared, sorted(dropped)

    def advertised(self) -> list[str] | None:
        """What heartbeats announce as supported (``None``: everything)."""
        if self.supported is None:
            return None
        return sorted(self.supported | set(self.renames))


OPENAI_CORE = frozenset(
    {
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
    }
)

PROFILES: dict[ProfileName, UpstreamProfile] = {
    # Any OpenAI-compatible server: everything the client sent passes through.
    "openai": UpstreamProfile("openai", None, limit_name=None),
    # vLLM takes OpenAI's parameters plus its samplers (top_k, repetition_penalty, min_p, ...).
    "vllm": UpstreamProfile("vllm", None, limit_name=None),
    # llama.cpp's server: one choice per request, its own name for the repetition penalty.
    "llamacpp": UpstreamProfile(
        "llamacpp",
        (OPENAI_CORE - {"n", "max_completion_tokens", "user", "reasoning_effort"}) | {"top_k", "repeat_penalty"},
        {"repetition_penalty": "repeat_penalty", "max_completion_tokens": "max_tokens"},
    ),
    # Ollama's OpenAI-compatible endpoint.
    "ollama": UpstreamProfile(
        "ollama",
        frozenset(
            {
                "stream_options",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "seed",
                "tools",
                "response_format",
                "reasoning_effort",
            }
        ),
        {"max_completion_tokens": "max_tokens"},
    ),
    # comput3 (cloud): its models take max_tokens and temperature only.
    "comput3": UpstreamProfile(
        "comput3", frozenset({"max_tokens", "temperature"}), {"max_completion_tokens": "max_tokens"}, stream_usage=False
    ),
    # generalcompute (cloud): OpenAI's samplers plus top_k and repetition_penalty, tools and JSON mode.
    "generalcompute": UpstreamProfile(
        "generalcompute",
        frozenset(
            {
                "max_tokens",
                "temperature",
                "top_p",
                "n",
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "user",
                "top_k",
                "repetition_penalty",
                "tools",
                "tool_choice",
                "response_format",
            }
        ),
        {"max_completion_tokens": "max_tokens"},
        stream_usage=False,
    ),
    # naga (cloud): the fullest OpenAI shape; max_completion_tokens only.
    "naga": UpstreamProfile(
        "naga",
        frozenset(
            {
                "stream_options",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "response_format",
                "reasoning_effort",
                "prediction",
                "web_search_options",
                "image_config",
            }
        ),
        {"max_tokens": "max_completion_tokens"},
        limit_name="max_completion_tokens",
    ),
}
