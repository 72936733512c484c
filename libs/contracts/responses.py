"""OpenAI's Responses API request (``POST /v1/responses``) as we validate it.

The gateway answers it by translating it into a chat completion (``services.ingress.responses``), so unlike the
chat body, nothing here passes through untouched: an unknown parameter is a 400 naming it (it would be dropped
silently otherwise), and so is a known one the translation cannot honour (a built-in tool, ``background``,
``conversation``, ``truncation: "auto"``, ...). Routing works as on every endpoint that reaches a hoster: our
fields and OpenRouter's, from ``RoutedRequest``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, WithJsonSchema, field_validator, model_validator

from libs.contracts.common import Contract, ParamError
from libs.contracts.openai import (
    MAX_TOKEN_BUDGET,
    JsonObjectFormat,
    RoutedRequest,
    Seed,
    TextFormat,
    TopK,
    TopLogprobs,
    Whole,
)
from libs.contracts.openrouter import CONFLICT_SCHEMAS, UNSUPPORTED


class _Closed(Contract):
    """An object of the Responses API: an unknown field is refused, never dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)


# Item and part decorations every item may carry as the API returned it (an earlier response's output passed
# back as input): accepted, and of no meaning to the model.
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputTextPart(_Closed):
    """``{"type": "input_text", "text": ...}``."""

    type: Literal["input_text"]
    text: str


class InputImagePart(_Closed):
    """An image by URL or data URL (``file_id``: there is no Files API here, refused in translation)."""

    type: Literal["input_image"]
    image_url: str | None = Field(None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class InputFilePart(_Closed):
    """A file given inline (``file_data``); ``file_id`` and ``file_url`` are refused in translation."""

    type: Literal["input_file"]
    file_data: str | None = None
    filename: str | None = None
    file_id: str | None = None
    file_url: str | None = None


class OutputTextPart(_Closed):
    """An earlier answer's text."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class RefusalPart(_Closed):
    """An earlier answer's refusal."""

    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    InputTextPart | InputImagePart | InputFilePart | OutputTextPart | RefusalPart, Field(discriminator="type")
]
ToolOutputPart = Annotated[InputTextPart | InputImagePart | InputFilePart, Field(discriminator="type")]


def _text_or_list(value: Any) -> str:
    """Which form a string-or-list field takes: so that a bad list is reported as such, not as "not a string"."""
    return "text" if isinstance(value, str) else "list"


Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentPart], Tag("list")], Discriminator(_text_or_list)
]
ToolOutput = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ToolOutputPart], Tag("list")], Discriminator(_text_or_list)
]


class MessageItem(_Closed):
    """A message: the easy form (``type`` left out, content a string) or the item form (parts, an id)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Content
    id: str | None = None
    status: ItemStatus | None = None
    phase: str | None = None


class FunctionCallItem(_Closed):
    """A function the model called (an earlier answer's output)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(_Closed):
    """The result of a function call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: ToolOutput
    id: str | None = None
    status: ItemStatus | None = None


class SummaryText(_Closed):
    """One part of a reasoning summary."""

    type: Literal["summary_text"]
    text: str


class ReasoningText(_Closed):
    """The model's reasoning, as open models give it."""

    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(_Closed):
    """An earlier answer's reasoning, passed back. Encrypted content cannot be read by any hoster here."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


def _item_type(value: Any) -> str | None:
    """An item's ``type``; a message may leave it out."""
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]

Input = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[InputItem], Field(max_length=4096), Tag("list")],
    Discriminator(_text_or_list),
]

# Items of the Responses API the translation to a chat completion cannot carry: each refused by name.
UNSUPPORTED_ITEMS = frozenset(
    {
        "item_reference",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "web_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "tool_search_call",
        "tool_search_output",
        "compaction",
        "compaction_trigger",
    }
)

FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionTool(_Closed):
    """Responses' flat function tool: ``{"type": "function", "name", "description", "parameters", "strict"}``."""

    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Closed):
    """Force one function."""

    type: Literal["function"]
    name: str


class AllowedFunction(_Closed):
    """A function ``allowed_tools`` lets the model call."""

    type: Literal["function"]
    name: str


class AllowedTools(_Closed):
    """Restrict the model to some of ``tools`` (``mode``: may or must call one)."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[AllowedFunction] = Field(min_length=1, max_length=128)


ToolChoice = (
    Literal["none", "auto", "required"] | Annotated[FunctionChoice | AllowedTools, Field(discriminator="type")] | None
)


class JsonSchemaText(_Closed):
    """Structured outputs: the answer follows ``schema``."""

    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Closed):
    """``text``: the answer's format and verbosity."""

    format: Annotated[TextFormat | JsonObjectFormat | JsonSchemaText, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Closed):
    """``reasoning``: ``effort`` is sent as chat's ``reasoning_effort``; summaries are accepted but never made
    (open models give their reasoning itself: it comes back as ``reasoning_text`` content)."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseStreamOptions(_Closed):
    """``stream_options``: the gateway never pads its events, so ``include_obfuscation`` changes nothing."""

    include_obfuscation: bool | None = None


IncludeField = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Parameters of the Responses API for features the gateway does not have: any value but null is a 400.
_NOT_SERVED = {
    "conversation": "the Conversations API is not served here; pass previous_response_id or the items",
    "prompt": "stored prompt templates are not served here; send the input itself",
    "moderation": "the gateway runs no moderation",
    "context_management": "the gateway does not compact conversations",
    "prompt_cache_options": "hosters do not take prompt caching options",
}


def _served_only(*served: dict[str, Any]) -> WithJsonSchema:
    """The JSON Schema of a parameter of which only ``served`` (and null) is served."""
    return WithJsonSchema({"anyOf": [*served, {"type": "null"}]})


# OpenAI's least ``max_output_tokens`` is 16.
OutputBudget = Annotated[int, Field(ge=16, le=MAX_TOKEN_BUDGET), Whole]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


# A request must give the model something to answer: an input (a string, or at least one item), instructions,
# or a stored conversation to continue (without them it is a 400 "Missing required parameter: 'input'").
_SOMETHING_TO_ANSWER: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["input"],
            "properties": {"input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}]}},
        },
        {"required": ["instructions"], "properties": {"instructions": {"type": "string"}}},
        {"required": ["previous_response_id"], "properties": {"previous_response_id": {"type": "string"}}},
    ]
}


class ResponsesRequest(RoutedRequest):
    """``POST /v1/responses`` body: OpenAI's parameters the translation to a chat completion can honour, the
    samplers open models add, and routing in our dialect or OpenRouter's."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"allOf": [*CONFLICT_SCHEMAS, _SOMETHING_TO_ANSWER]}
    )

    input: Input | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1, le=1024), Whole] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: OutputBudget | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: TopLogprobs | None = None
    include: list[IncludeField] | None = Field(None, max_length=16)
    metadata: Metadata | None = None
    user: str | None = Field(None, max_length=512)
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=1024)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: Literal["auto", "default"] | None = None
    store: bool | None = True
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    # What the OpenAPI document says of the next ones is what is served: "auto", true, anything but null are
    # refused (by ``_servable``, with a message saying why).
    truncation: Annotated[Literal["auto", "disabled"] | None, _served_only({"const": "disabled"})] = None
    background: Annotated[bool | None, _served_only({"const": False})] = None
    conversation: Annotated[Any, _served_only()] = None
    prompt: Annotated[Any, _served_only()] = None
    moderation: Annotated[Any, _served_only()] = None
    context_management: Annotated[Any, _served_only()] = None
    prompt_cache_options: Annotated[Any, _served_only()] = None
    # Open-model samplers, sent on as chat takes them (vLLM, llama.cpp, generalcompute).
    top_k: TopK | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: Seed | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _served_items(cls, value: Any) -> Any:
        for index, item in enumerate(value if isinstance(value, list) else ()):
            kind = _item_type(item)
            if kind is not None and kind not in ITEM_TYPES and kind not in UNSUPPORTED_ITEMS:
                raise ParamError(f"input[{index}].type", f"'{kind[:64]}' is not an item type of the Responses API")
            if kind in UNSUPPORTED_ITEMS:
                raise ParamError(
                    f"input[{index}].type",
                    f"'{kind}' items are not supported: the gateway serves messages, function calls, their "
                    "outputs and reasoning (pass previous_response_id or the items themselves, not references)",
                    UNSUPPORTED,
                )
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise ParamError(
                    f"tools[{index}].type",
                    f"The '{kind}' tool is not supported: hosters run no built-in tools, so the gateway serves "
                    "function tools (type 'function') only",
                    UNSUPPORTED,
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind not in ("function", "allowed_tools"):
            raise ParamError(
                "tool_choice.type",
                f"tool_choice '{kind[:64]}' is not supported: hosters run no built-in tools (choose 'none', 'auto', "
                "'required', a function or allowed_tools)",
                UNSUPPORTED,
            )
        return value

    @model_validator(mode="after")
    def _servable(self) -> ResponsesRequest:
        for name, why in _NOT_SERVED.items():
            if getattr(self, name) is not None:
                raise ParamError(name, f"'{name}' is not supported: {why}", UNSUPPORTED)
        if self.background:
            raise ParamError("background", "Background responses are not supported: stream, or wait", UNSUPPORTED)
        if self.truncation == "auto":
            raise ParamError(
                "truncation",
                "truncation 'auto' is not supported: the gateway does not drop input to fit a context window",
                UNSUPPORTED,
            )
        names = {tool.name for tool in self.tools or ()}
        choice = self.tool_choice
        if choice == "required" and not names:
            raise ParamError("tool_choice", "tool_choice 'required' needs tools")
        forced = [choice.name] if isinstance(choice, FunctionChoice) else []
        forced += [tool.name for tool in choice.tools] if isinstance(choice, AllowedTools) else []
        for name in forced:
            if name not in names:
                raise ParamError("tool_choice", f"tool_choice names the function '{name}', which is not in tools")
        if self.top_logprobs is not None and LOGPROBS_INCLUDE not in (self.include or ()):
            # OpenAI returns them only when asked: asking for the top ones alone would be ignored.
            raise ParamError("top_logprobs", f"top_logprobs requires include to list '{LOGPROBS_INCLUDE}'")
        return self

    @property
    def logprobs(self) -> bool:
        """Whether the answer's text carries its tokens' log probabilities."""
        return LOGPROBS_INCLUDE in (self.include or ())
