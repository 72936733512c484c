"""The OpenAI Agents SDK (``openai-agents``) against the whole stack with its default settings, which speak the
Responses API (``/v1/responses``): only the client's base URL and key are the gateway's. An agent calls a
function tool and answers after its result, run to the end and streamed, and an agent with a pydantic
``output_type`` gets an instance back.

Tracing is turned off: the SDK would upload traces to api.openai.com with the client's key, which is neither
reachable here nor the place a gateway key belongs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import pytest
from agents import (
    Agent,
    ItemHelpers,
    RawResponsesStreamEvent,
    RunItemStreamEvent,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from libs.devstack.stack import DEMO_MODEL, Stack

pytestmark = pytest.mark.e2e

QUESTION = "What is the weather in Paris?"


class Weather(BaseModel):
    """The weather an agent reports as its structured output."""

    city: str = Field(description="The city, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"]
    summary: str


@pytest.fixture(scope="module")
async def gateway_client(stack: Stack, api_key: str) -> AsyncIterator[AsyncOpenAI]:
    """The SDK's default client set to the gateway, as the Agents SDK documents for other providers."""
    client = AsyncOpenAI(base_url=stack.config.api_base, api_key=api_key, max_retries=0, timeout=30)
    set_default_openai_client(client)
    set_tracing_disabled(True)
    yield client
    await client.close()


def weather_agent(calls: list[str]) -> Agent:
    """An agent with one function tool, recording each city the model asked it about in ``calls``."""

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city, e.g. Paris.
        """
        calls.append(city)
        return f"It is sunny and 21 degrees celsius in {city}."

    return Agent(
        name="Weather assistant",
        instructions="Answer questions about the weather; use the tool.",
        model=DEMO_MODEL,
        tools=[get_weather],
    )


async def test_an_agent_calls_its_tool_and_answers_after_the_result(gateway_client: AsyncOpenAI) -> None:
    calls: list[str] = []
    result = await Runner.run(weather_agent(calls), QUESTION)
    assert len(calls) == 1
    assert calls[0]  # the model passed a city, parsed from the arguments the gateway returned
    assert isinstance(result.final_output, str)
    assert result.final_output.strip()
    kinds = [type(item) for item in result.new_items]
    assert ToolCallItem in kinds
    assert ToolCallOutputItem in kinds
    # Two model turns: the one that called the tool and the one that answered; both went through the gateway.
    assert len(result.raw_responses) == 2
    assert all(response.response_id and response.response_id.startswith("resp_") for response in result.raw_responses)
    assert all(response.usage.output_tokens > 0 for response in result.raw_responses)


async def test_a_streamed_run_calls_the_tool_and_streams_the_answer(gateway_client: AsyncOpenAI) -> None:
    calls: list[str] = []
    streamed = Runner.run_streamed(weather_agent(calls), QUESTION)
    text = ""
    item_kinds: list[str] = []
    async for event in streamed.stream_events():
        if isinstance(event, RawResponsesStreamEvent) and event.data.type == "response.output_text.delta":
            text += event.data.delta
        elif isinstance(event, RunItemStreamEvent):
            item_kinds.append(event.item.type)
    assert streamed.is_complete
    assert len(calls) == 1
    assert item_kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert item_kinds[-1] == "message_output_item"
    assert isinstance(streamed.final_output, str)
    assert streamed.final_output.strip()
    assert text == streamed.final_output  # the answer came in deltas that join to the final output
    assert ItemHelpers.text_message_outputs(streamed.new_items) == streamed.final_output


async def test_an_agent_with_an_output_type_returns_an_instance(gateway_client: AsyncOpenAI) -> None:
    agent = Agent(name="Weather reporter", instructions="Report the weather.", model=DEMO_MODEL, output_type=Weather)
    result = await Runner.run(agent, "The weather in Paris, please")
    assert isinstance(result.final_output, Weather)
    assert result.final_output.city
    assert result.final_output.unit in ("celsius", "fahrenheit")
    assert isinstance(result.final_output_as(Weather, raise_if_incorrect_type=True), Weather)
