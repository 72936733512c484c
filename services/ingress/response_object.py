"""The Responses API's ``Response`` object, built from what a chat completion answered: the echo of the request,
the output items, the status and the usage. Pure, as ``services.ingress.responses``; ``response_of`` answers a
whole chat completion, and ``services.ingress.response_stream`` builds the same object from chunks.

Output items are ``reasoning`` (the chat message's ``reasoning_content``, or ``reasoning``, as ``reasoning_text``
content: open models give their reasoning itself, not a summary), then the assistant ``message`` (its
``output_text``, its ``refusal``), then one ``function_call`` per tool call, as OpenAI orders them. A chat
answer cut by its limit (``finish_reason: "length"``) or by a content filter makes the response ``incomplete``
(``incomplete_details.reason``: ``max_output_tokens`` / ``content_filter``), and its last item too. The JSON
carries no ``output_text``: the SDKs compute it from the output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from libs.contracts.responses import AllowedTools, FunctionChoice, ResponsesRequest
from libs.platform.ids import new_request_id

# Chat finish reasons that leave a response incomplete, and the reason the Response gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


_SURROGATE = re.compile("[\ud800-\udfff]")


def hoster_json(body: bytes) -> dict[str, Any]:
    """A hoster's completion or chunk, parsed: by orjson, else by Python's json (which the usage guard reads
    with, so it may have let through a lone surrogate or an integer past 64 bits, which orjson neither reads
    nor writes), made writable: lone surrogates as U+FFFD, such integers as floats. ``{}`` for anything but
    a JSON object."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = _writable(json.loads(body))
        except ValueError:
            return {}
    return doc if isinstance(doc, dict) else {}


def _writable(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_writable(item) for item in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def response_echo(request: ResponsesRequest) -> dict[str, Any]:
    """The request's parameters as every Response object of it repeats them (its defaults where it set none;
    ``temperature`` and ``top_p`` null when unset: the hoster's defaults apply, which the gateway cannot know;
    a function's ``strict`` likewise)."""
    reasoning = request.reasoning
    text = request.text
    echo: dict[str, Any] = {
        "background": False,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "service_tier": "default",
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": {
            "format": (
                text.format.model_dump(by_alias=True, exclude_none=True)
                if text is not None and text.format is not None
                else {"type": "text"}
            ),
            **({"verbosity": text.verbosity} if text is not None and text.verbosity is not None else {}),
        },
        "tool_choice": (
            request.tool_choice.model_dump()
            if isinstance(request.tool_choice, FunctionChoice | AllowedTools)
            else request.tool_choice or "auto"
        ),
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                **({"description": tool.description} if tool.description is not None else {}),
                "parameters": tool.parameters,
                "strict": tool.strict,
            }
            for tool in request.tools or ()
        ],
        "top_logprobs": request.top_logprobs,
        "top_p": request.top_p,
        "truncation": "disabled",
    }
    for field in ("user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention"):
        if getattr(request, field) is not None:
            echo[field] = getattr(request, field)
    return echo


def response_body(
    echo: dict[str, Any],
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    *,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    reason = INCOMPLETE.get(finish) if finish is not None and status == "incomplete" else None
    body = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": {"reason": reason} if reason is not None else None,
        "model": model,
        "output": output,
        **echo,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def status_of(finish: str | None) -> str:
    """The Response's status for the chat answer's finish reason."""
    return "incomplete" if finish in INCOMPLETE else "completed"


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def usage_of(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's ``usage`` in the Responses shape, with the gateway's ``cost`` (credits),
    ``cost_details`` and ``estimated`` as the chat usage carries them. Hosters report no cache writes: 0."""
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    body: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(cached, prompt), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": min(reasoning, completion)},
        "total_tokens": prompt + completion,
    }
    for field in ("cost", "cost_details", "estimated"):
        if field in usage:
            body[field] = usage[field]
    return body


def logprobs_of(logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's ``logprobs.content`` as Responses' ``LogProb`` list (well-formed entries only)."""
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(entries, list):
        return []
    out = []
    for entry in entries:
        converted = _logprob(entry)
        if converted is not None:
            tops = entry.get("top_logprobs")
            converted["top_logprobs"] = [
                top for top in map(_logprob, tops if isinstance(tops, list) else ()) if top is not None
            ]
            out.append(converted)
    return out


def _logprob(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    token, logprob = entry.get("token"), entry.get("logprob")
    if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, int | float):
        return None
    if not math.isfinite(logprob):
        return None
    raw = entry.get("bytes")
    if not (isinstance(raw, list) and all(type(b) is int and 0 <= b < 256 for b in raw)):
        raw = list(token.encode())
    return {"token": token, "logprob": logprob, "bytes": raw}


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """A ``reasoning`` output item (its text, when known, as one ``reasoning_text`` part)."""
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """An assistant ``message`` output item."""
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A ``function_call`` output item."""
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    return item | {"status": status}


def reasoning_of(delta: dict[str, Any]) -> Any:
    """A message's (or delta's) reasoning: ``reasoning_content`` (vLLM's, this network's), else ``reasoning``
    (OpenRouter's, newer vLLM's)."""
    reasoning = delta.get("reasoning_content")
    return reasoning if isinstance(reasoning, str) else delta.get("reasoning")


def response_of(
    completion: dict[str, Any],
    request: ResponsesRequest,
    response_id: str,
    created_at: int,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The Response object for a whole chat completion: reasoning, then the message (text, refusal), then the
    function calls, as OpenAI orders them; ``incomplete`` (and its last item) when the model was cut by its
    limit or a content filter. ``completed_at`` defaults to ``created_at``."""
    choices = completion.get("choices")
    choice = next((c for c in choices if isinstance(c, dict)), {}) if isinstance(choices, list) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    output = []
    reasoning = reasoning_of(message)
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(new_request_id("rs_"), reasoning, "completed"))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    parts = []
    if isinstance(content, str) and content:
        parts.append(text_part(content, logprobs_of(choice.get("logprobs")) if request.logprobs else []))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        output.append(message_item(new_request_id("msg_"), parts, "completed"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            call_id = call.get("id")
            output.append(
                call_item(
                    new_request_id("fc_"),
                    call_id if isinstance(call_id, str) and call_id else new_request_id("call_"),
                    _string(function.get("name")),
                    _string(function.get("arguments")),
                    "completed",
                )
            )
    status = status_of(finish)
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"
    usage = completion.get("usage")
    model = completion.get("model")
    return response_body(
        response_echo(request),
        response_id,
        created_at,
        model if isinstance(model, str) and model else request.routed_model,
        status,
        output,
        finish=finish,
        usage=usage_of(usage) if isinstance(usage, dict) else None,
        completed_at=created_at if completed_at is None else completed_at,
    )


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
