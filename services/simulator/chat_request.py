"""What a chat completion request asks the simulator for: the fields it reads, validated as OpenAI does.

Every other OpenAI parameter (temperature, seed, logit_bias, ...) is accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ``hang`` accepts and never sends a byte; ``disconnect`` breaks off after ``fault_after_tokens``; ``stall`` goes
# silent (connection open) after ``fault_after_tokens``. The hostile ones, for the adapter's bounds: an SSE line
# that never ends, an error body of ``fault_bytes`` (0: for ever), a stream of ``fault_choices`` choices, and
# ``after_done``: the whole stream, then content after its ``[DONE]`` and silence with the connection open.
Fault = Literal[
    "none", "error", "hang", "disconnect", "stall", "endless_line", "huge_error", "many_choices", "after_done"
]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class SimulatorOverride(BaseModel):
    """The optional ``simulator`` field of a request: behaviour for this request only.

    A fault named here always happens, whatever the configured fault rate.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    reply_tokens: int | None = Field(None, ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    fault: Fault | None = None
    fault_status: int | None = Field(None, ge=400, le=599)
    fault_after_tokens: int | None = Field(None, ge=0)
    fault_bytes: int | None = Field(None, ge=0)
    fault_choices: int | None = Field(None, ge=1)
    reasoning_tokens: int | None = Field(None, ge=0)
    # Prompt tokens reported as served from a cache; any number, so a test can play a hoster that lies.
    cached_tokens: int | None = None
    # A lying hoster: the usage reported is the true one times this (1000: inflated, -1: negative).
    usage_factor: float | None = None


class _Lenient(BaseModel):
    """A part of an OpenAI request: strictly typed, other fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Lenient):
    """``stream_options`` of a streaming request."""

    include_usage: bool = False


class FunctionDefinition(_Lenient):
    """A function offered to the model: its name and the JSON Schema of its arguments."""

    name: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class FunctionTool(_Lenient):
    """An entry of ``tools`` that the simulated model may call."""

    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(_Lenient):
    """A free-form ``custom`` tool: accepted, never called by the simulated model."""

    type: Literal["custom"]
    custom: dict[str, Any]


class ToolName(_Lenient):
    """The ``function`` or ``custom`` part of a named ``tool_choice``."""

    name: str


class NamedFunctionChoice(_Lenient):
    """``tool_choice`` forcing a call to one function."""

    type: Literal["function"]
    function: ToolName


class NamedCustomChoice(_Lenient):
    """``tool_choice`` forcing a custom tool, which the simulator answers with text."""

    type: Literal["custom"]
    custom: ToolName


class AllowedTools(_Lenient):
    """Which tools the model may call (``tools`` entries naming them) and whether it must call one."""

    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(_Lenient):
    """``tool_choice`` restricting the model to some of the tools."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class JsonSchemaFormat(_Lenient):
    """``response_format.json_schema``: the schema the content must satisfy."""

    name: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ResponseFormat(_Lenient):
    """``response_format``: plain text, any JSON object, or JSON satisfying a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedFunctionChoice | NamedCustomChoice | AllowedToolsChoice


class ChatCompletionRequest(_Lenient):
    """The parts of ``POST /v1/chat/completions`` the simulator reads; other fields are ignored."""

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning_effort: ReasoningEffort | None = None
    simulator: SimulatorOverride | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @property
    def token_cap(self) -> int | None:
        """The client's cap on completion tokens; ``max_completion_tokens`` wins over the legacy name."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        """The non-empty stop sequences."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [stop for stop in stops if stop]

    @property
    def functions(self) -> list[FunctionDefinition]:
        """The functions among ``tools``."""
        return [tool.function for tool in self.tools or [] if isinstance(tool, FunctionTool)]


@dataclass(frozen=True, slots=True)
class InvalidParam:
    """A request that is well-formed but asks for something impossible: OpenAI answers 400 naming ``param``."""

    param: str
    message: str


def request_problem(request: ChatCompletionRequest) -> InvalidParam | None:
    """What is wrong with ``request`` beyond the types of its fields, if anything."""
    if request.top_logprobs is not None and not request.logprobs:
        return InvalidParam("top_logprobs", "Invalid value for 'top_logprobs': 'logprobs' must be true to use it.")
    response_format = request.response_format
    if response_format is not None and response_format.type == "json_schema" and response_format.json_schema is None:
        return InvalidParam("response_format.json_schema", "Missing required parameter: 'response_format.json_schema'.")
    choice = request.tool_choice
    if (choice == "required" or isinstance(choice, AllowedToolsChoice)) and not request.tools:
        return InvalidParam("tool_choice", "Invalid value for 'tool_choice': it needs 'tools' to choose from.")
    if isinstance(choice, NamedFunctionChoice) and choice.function.name not in {f.name for f in request.functions}:
        return InvalidParam(
            "tool_choice", f"Invalid value for 'tool_choice': no function named '{choice.function.name}'."
        )
    return None
