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
    # Whether a client's unstreamed request goes upstream unstreamed (else every request is streamed and
    # assembled here): a server whose streams carry no usage reports its own counts only in a whole answer.
    answers_unstreamed: bool = False
    # Whether chat messages are made plain for a server with a strict message schema: ``"content": null``
    # (OpenAI's SDKs send it beside tool calls) is left out, and the ``developer`` role is sent as ``system``.
    plain_messages: bool = False

    def accepts(self, parameter: str) -> bool:
        """Whether a client's parameter reaches this upstream (as itself or renamed)."""
        return (
            parameter in ESSENTIAL or self.supported is None or parameter in self.supported or parameter in self.renames
        )

    def prepare(
        self,
        body: dict[str, Any],
        upstream_model: str,
        max_tokens: int,
        endpoint: Endpoint = CHAT,
        client_streams: bool = True,
    ) -> tuple[dict[str, Any], list[str]]:
        """The upstream's request body for a client's ``body`` sent to ``endpoint``, with the completion limit
        ``max_tokens`` (the one the reservation was priced on), and the parameters it had to drop. It asks for a
        stream (``"stream": true``) unless the client did not (``client_streams``) and the profile
        ``answers_unstreamed``."""
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
        prepared["stream"] = streamed = client_streams or not self.answers_unstreamed
        if self.plain_messages and isinstance(prepared.get("messages"), list):
            prepared["messages"] = plain_messages(prepared["messages"])
        if streamed and self.stream_usage:
            prepared["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            prepared.pop("stream_options", None)
        return prepared, sorted(dropped)

    def advertised(self) -> list[str] | None:
        """What heartbeats announce as supported (``None``: everything)."""
        if self.supported is None:
            return None
        return sorted(self.supported | set(self.renames))


def plain_messages(messages: list[Any]) -> list[Any]:
    """``messages`` without ``"content": null`` and with ``developer`` sent as ``system`` (a server with a strict
    schema refuses both with a 500); anything else, malformed messages included, as the client sent it."""
    plain = []
    for message in messages:
        if isinstance(message, dict):
            message = {key: value for key, value in message.items() if not (key == "content" and value is None)}
            if message.get("role") == "developer":
                message["role"] = "system"
        plain.append(message)
    return plain


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
    # llama.cpp's servers, llama-server and llama-cpp-python's (``python -m llama_cpp.server``): one choice per
    # request (llama-cpp-python ignores n, llama-server refuses it), their own name for the repetition
    # penalty. llama-server reports usage in a stream when asked; llama-cpp-python ignores stream_options and
    # reports usage only in a whole answer, so an unstreamed request is sent unstreamed. llama-cpp-python
    # ignores parallel_tool_calls (dropped here, so the routing record says so) and answers a 500 to
    # "content": null and to the developer role (see ``plain_messages``).
    "llamacpp": UpstreamProfile(
        "llamacpp",
        (OPENAI_CORE - {"n", "max_completion_tokens", "user", "reasoning_effort", "parallel_tool_calls"})
        | {"top_k", "repeat_penalty"},
        {"repetition_penalty": "repeat_penalty", "max_completion_tokens": "max_tokens"},
        answers_unstreamed=True,
        plain_messages=True,
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
