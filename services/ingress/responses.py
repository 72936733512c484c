"""OpenAI's Responses API over chat completions: hosters serve ``/v1/chat/completions``, and ``POST /v1/responses``
is translated into one, its answer translated back. Pure: no I/O, no clock (times and response ids are passed
in; item ids are drawn here). This module translates the request; ``services.ingress.response_object`` builds
the ``Response`` of a whole answer, ``services.ingress.response_stream`` the events of a streamed one.

``chat_request_of`` takes the Responses body (and the stored items of the chain its ``previous_response_id``
names) and gives the chat completion body the chat path routes, validated as ``ChatCompletionRequest``, and the
request's input items as they are stored. How items become chat messages: ``instructions`` is a leading
``system`` message, then the previous items, then the input. A ``function_call`` joins the assistant message
just before it (a turn's text and its calls are one chat message), or is an assistant message of its own; a
``function_call_output`` is a ``tool`` message. A ``reasoning`` item's text (its ``reasoning_text`` content,
else its summary) is the ``reasoning_content`` of the assistant message that follows it, as chat templates
read it; reasoning followed by no assistant message, or only encrypted, is dropped (no hoster can read
OpenAI's encrypted reasoning).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pydantic import ValidationError

from libs.contracts.openai import (
    ROUTING_FIELDS,
    ChatCompletionRequest,
    JsonObjectFormat,
    ValidationFailure,
    validation_failure,
)
from libs.contracts.openrouter import UNSUPPORTED
from libs.contracts.responses import (
    AllowedTools,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputFilePart,
    InputImagePart,
    InputTextPart,
    JsonSchemaText,
    MessageItem,
    OutputTextPart,
    ReasoningItem,
    RefusalPart,
    ResponsesRequest,
)
from libs.platform.ids import new_request_id


class InvalidRequest(Exception):
    """A Responses body refused with a 400: the message, the parameter at fault and the code."""

    def __init__(self, failure: ValidationFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class ChatTranslation(NamedTuple):
    """A Responses request and the chat completion that serves it."""

    request: ResponsesRequest
    # What the chat path routes: ``chat`` is ``chat_body`` validated (its routing, its routed model).
    chat: ChatCompletionRequest
    chat_body: dict[str, Any]
    # This request's input as stored for a later ``previous_response_id`` (the chain's earlier items not
    # included): each with an id (``msg_``, ``fc_``, ``fco_``, ``rs_``).
    input_items: list[dict[str, Any]]


# Parameters sent to the hoster as the client wrote them, under the same name on both APIs.
_SAME_NAME = (
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
)


def chat_request_of(payload: dict[str, Any], previous_items: Sequence[dict[str, Any]] | None = None) -> ChatTranslation:
    """The chat completion serving the Responses body ``payload``. ``previous_items`` are the stored input and
    output items of the chain ``previous_response_id`` names, oldest first (the caller resolves it; required
    when the body names one); they go before the new input. Raises ``InvalidRequest`` for a 400."""
    try:
        request = ResponsesRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(validation_failure(payload, exc.errors(include_url=False))) from None
    if request.previous_response_id is not None and previous_items is None:
        raise ValueError("previous_response_id is set: pass the stored items of its chain")
    input_items = _stored_input(request)
    messages = chat_messages([*(previous_items or ()), *input_items])
    if request.instructions is not None:
        messages.insert(0, {"role": "system", "content": request.instructions})
    if not messages:
        raise InvalidRequest(ValidationFailure("Missing required parameter: 'input'.", "input"))
    body = {"model": payload["model"], "messages": messages} | _chat_parameters(request, payload)
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        message, param, code = validation_failure(body, exc.errors(include_url=False))
        raise InvalidRequest(ValidationFailure(message, _responses_param(param), code)) from None
    return ChatTranslation(request, chat, body, input_items)


def _responses_param(param: str | None) -> str | None:
    """A chat parameter at fault, by its Responses name (messages come from the input)."""
    return "input" if param is not None and param.startswith("messages") else param


def _chat_parameters(request: ResponsesRequest, payload: dict[str, Any]) -> dict[str, Any]:
    """Every chat parameter but the messages: routing as the client sent it (validated again, and removed for
    the hoster, by the chat path), the limit, the samplers, tools, formats and reasoning."""
    body: dict[str, Any] = {field: payload[field] for field in ROUTING_FIELDS if field in payload}
    if request.stream:
        # Responses' final event carries the usage: the last chat chunk must.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    body |= {field: payload[field] for field in _SAME_NAME if payload.get(field) is not None}
    body |= _chat_tools(request)
    text = request.text
    if text is not None and isinstance(text.format, JsonObjectFormat):
        body["response_format"] = {"type": "json_object"}
    elif text is not None and isinstance(text.format, JsonSchemaText):
        spec = text.format
        schema = {"name": spec.name, "schema": spec.schema_, "description": spec.description, "strict": spec.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": _present(schema)}
    if text is not None and text.verbosity is not None:
        body["verbosity"] = text.verbosity
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    return body


def _chat_tools(request: ResponsesRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` in chat's shape. ``allowed_tools`` is served by
    sending only the allowed functions, with its mode as the choice."""
    tools = request.tools or []
    choice = request.tool_choice
    if isinstance(choice, AllowedTools):
        allowed = {tool.name for tool in choice.tools}
        tools = [tool for tool in tools if tool.name in allowed]
        choice = choice.mode
    if not tools:
        return {}
    body: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": _present(
                    {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                        "strict": tool.strict,
                    }
                ),
            }
            for tool in tools
        ]
    }
    if isinstance(choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# Input items as stored --------------------------------------------------------------------------------------


def _refuse(param: str, why: str, code: str | None = UNSUPPORTED) -> InvalidRequest:
    return InvalidRequest(ValidationFailure(f"Invalid value for '{param}': {why}", param, code))


def _stored_input(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items of the API's stored shape (``ItemResource``), each with an id, checked
    against what a chat completion can carry."""
    if request.input is None:
        return []
    if isinstance(request.input, str):
        return [_message("user", [{"type": "input_text", "text": request.input}])]
    items = []
    for index, item in enumerate(request.input):
        param = f"input[{index}]"
        if isinstance(item, MessageItem):
            items.append(_stored_message(item, param))
        elif isinstance(item, FunctionCallItem):
            items.append(
                {
                    "id": item.id or new_request_id("fc_"),
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": item.status or "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            output: Any = item.output
            if not isinstance(output, str):
                output = [_text_only(part, f"{param}.output[{i}]", "tool outputs") for i, part in enumerate(output)]
            items.append(
                {
                    "id": item.id or new_request_id("fco_"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": output,
                    "status": item.status or "completed",
                }
            )
        else:
            items.append(_stored_reasoning(item))
    return items


def _message(role: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": new_request_id("msg_"), "type": "message", "role": role, "status": status, "content": content}


def _stored_message(item: MessageItem, param: str) -> dict[str, Any]:
    parts = [InputTextPart(type="input_text", text=item.content)] if isinstance(item.content, str) else item.content
    if item.role == "assistant":
        content = [_assistant_part(part, f"{param}.content[{i}]") for i, part in enumerate(parts)]
    elif item.role == "user":
        content = [_user_part(part, f"{param}.content[{i}]") for i, part in enumerate(parts)]
    else:
        content = [_text_only(part, f"{param}.content[{i}]", f"{item.role} messages") for i, part in enumerate(parts)]
    stored = _message(item.role, content, item.status or "completed")
    if item.id is not None:
        stored["id"] = item.id
    if item.phase is not None:
        stored["phase"] = item.phase
    return stored


def _text_only(part: Any, param: str, where: str) -> dict[str, Any]:
    if not isinstance(part, InputTextPart):
        raise _refuse(param, f"{where} carry text only (input_text parts), not {part.type}", None)
    return {"type": "input_text", "text": part.text}


def _user_part(part: Any, param: str) -> dict[str, Any]:
    if isinstance(part, InputTextPart):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, InputImagePart):
        if part.file_id is not None:
            raise _refuse(f"{param}.file_id", "there is no Files API here: give the image as image_url")
        if part.image_url is None:
            raise _refuse(f"{param}.image_url", "an input_image needs image_url (a URL or a data URL)", None)
        return {"type": "input_image", "image_url": part.image_url, "detail": part.detail or "auto"}
    if isinstance(part, InputFilePart):
        for field in ("file_id", "file_url"):
            if getattr(part, field) is not None:
                raise _refuse(f"{param}.{field}", "there is no Files API here: give the file inline as file_data")
        if part.file_data is None:
            raise _refuse(f"{param}.file_data", "an input_file needs file_data", None)
        return _present({"type": "input_file", "file_data": part.file_data, "filename": part.filename})
    raise _refuse(param, f"user messages carry input parts, not {part.type} (an assistant's)", None)


def _assistant_part(part: Any, param: str) -> dict[str, Any]:
    if isinstance(part, InputTextPart | OutputTextPart):
        return {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}
    if isinstance(part, RefusalPart):
        return {"type": "refusal", "refusal": part.refusal}
    raise _refuse(param, f"assistant messages carry text and refusals, not {part.type}", None)


def _stored_reasoning(item: ReasoningItem) -> dict[str, Any]:
    stored: dict[str, Any] = {
        "id": item.id or new_request_id("rs_"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": part.text} for part in item.summary],
    }
    if item.content is not None:
        stored["content"] = [{"type": "reasoning_text", "text": part.text} for part in item.content]
    if item.encrypted_content is not None:
        stored["encrypted_content"] = item.encrypted_content
    if item.status is not None:
        stored["status"] = item.status
    return stored


# Items -> chat messages -------------------------------------------------------------------------------------


def chat_messages(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items (``chat_request_of``'s input items, ``ResponseStream``'s and ``response_of``'s output) as chat
    messages; see the module's docstring for the rules."""
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []
    # The assistant message a function call joins: the last message, while it is the assistant's.
    assistant: dict[str, Any] | None = None
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            text = _reasoning_text(item)
            if text:
                reasoning.append(text)
            continue
        if kind == "function_call":
            function = {"name": item["name"], "arguments": item["arguments"]}
            call = {"id": item["call_id"], "type": "function", "function": function}
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            assistant.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item["output"]
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _chat_text(output)})
            assistant = None
        elif item["role"] == "assistant":
            texts = [part["text"] for part in item["content"] if part["type"] == "output_text"]
            refusals = [part["refusal"] for part in item["content"] if part["type"] == "refusal"]
            assistant = {"role": "assistant", "content": "".join(texts) if texts else None}
            if refusals:
                assistant["refusal"] = "".join(refusals)
            messages.append(assistant)
        else:
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
            assistant = None
            reasoning.clear()  # reasoning of no answer of the model's
        if reasoning and assistant is not None:
            previous = assistant.get("reasoning_content")
            assistant["reasoning_content"] = "\n\n".join([previous, *reasoning] if previous else reasoning)
            reasoning.clear()
    return messages


def _reasoning_text(item: dict[str, Any]) -> str:
    parts = item.get("content") or item.get("summary") or ()
    return "\n\n".join(part["text"] for part in parts if part.get("text"))


def _chat_text(output: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A tool's output as chat's tool content: a string, or text parts."""
    if isinstance(output, str):
        return output
    if len(output) == 1:
        return str(output[0]["text"])
    return [{"type": "text", "text": part["text"]} for part in output]


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Input parts as chat content: one text part as a plain string (every chat template reads that), others
    as chat's parts."""
    if len(parts) == 1 and parts[0]["type"] == "input_text":
        return str(parts[0]["text"])
    content = []
    for part in parts:
        if part["type"] == "input_text":
            content.append({"type": "text", "text": part["text"]})
        elif part["type"] == "input_image":
            content.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
        else:
            content.append({"type": "file", "file": {k: v for k, v in part.items() if k != "type"}})
    return content
