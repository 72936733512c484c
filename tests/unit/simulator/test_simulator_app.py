"""The simulator's HTTP behaviour, through httpx's ASGI transport and the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonschema
import openai
import orjson
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.types import Message

from services.simulator.app import SimulatedDisconnect, build_app
from services.simulator.settings import SimulatorSettings

PROMPT = [{"role": "user", "content": "How does the gateway pick a hoster?"}]
SDK_PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT[0]["content"]}]

MakeClient = Callable[..., httpx.AsyncClient]


def simulator(**fields: Any) -> Starlette:
    return build_app(SimulatorSettings(**fields))


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[httpx.AsyncClient] = []

    def make(app: Starlette, *, raise_app_exceptions: bool = True, **headers: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url="http://sim", headers=headers)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "demo-model", "messages": PROMPT, **fields}


def sse_payloads(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n") or not body
    events = [event for event in body.split(b"\n\n") if event]
    assert all(event.startswith(b"data: ") for event in events)
    return [event.removeprefix(b"data: ") for event in events]


def chunks(payloads: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(payload) for payload in payloads if payload != b"[DONE]"]


async def test_non_stream_returns_a_completion_with_usage(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=7))

    response = await client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-sim-")
    assert body["model"] == "demo-model"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split(" ")) == 7
    prompt_tokens = len(PROMPT[0]["content"]) // 4
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 7,
        "total_tokens": prompt_tokens + 7,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def test_max_tokens_cuts_the_reply(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=20))

    body = (await client.post("/v1/chat/completions", json=chat_body(max_tokens=3))).json()

    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_stream_sends_role_tokens_finish_then_done(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=5))

    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.content)
    assert payloads[-1] == b"[DONE]"
    events = chunks(payloads)
    assert len(events) == 1 + 5 + 1
    assert len({event["id"] for event in events}) == 1
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    assert all("usage" not in event for event in events)
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all(set(delta) == {"content"} for delta in deltas[1:-1])
    assert deltas[-1] == {}
    assert [event["choices"][0]["finish_reason"] for event in events] == [None] * 6 + ["stop"]


async def test_stream_and_non_stream_give_the_same_text(make_client: MakeClient) -> None:
    client = make_client(simulator())

    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    streamed = await client.post("/v1/chat/completions", json=chat_body(stream=True))

    text = "".join(event["choices"][0]["delta"].get("content", "") for event in chunks(sse_payloads(streamed.content)))
    assert text == whole["choices"][0]["message"]["content"]


async def test_include_usage_ends_with_a_usage_chunk_without_choices(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=4))
    body = chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=2)

    response = await client.post("/v1/chat/completions", json=body)

    payloads = sse_payloads(response.content)
    assert payloads[-1] == b"[DONE]"
    *earlier, last = chunks(payloads)
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 2
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 2
    assert all(event["usage"] is None for event in earlier)
    assert earlier[-1]["choices"][0]["finish_reason"] == "length"


async def test_error_fault_per_request_returns_its_status(make_client: MakeClient) -> None:
    client = make_client(simulator())

    response = await client.post(
        "/v1/chat/completions", json=chat_body(simulator={"fault": "error", "fault_status": 503})
    )

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


async def test_configured_error_fault_at_rate_one_fails_every_request(make_client: MakeClient) -> None:
    client = make_client(simulator(fault="error", fault_rate=1.0, fault_status=502))

    statuses = [(await client.post("/v1/chat/completions", json=chat_body())).status_code for _ in range(3)]

    assert statuses == [502, 502, 502]


async def test_configured_fault_at_rate_zero_never_happens(make_client: MakeClient) -> None:
    client = make_client(simulator(fault="error", fault_rate=0.0))

    response = await client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200


async def test_disconnect_fault_stops_the_stream_early_without_done(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=10), raise_app_exceptions=False)
    body = chat_body(stream=True, simulator={"fault": "disconnect", "fault_after_tokens": 3})

    response = await client.post("/v1/chat/completions", json=body)

    payloads = sse_payloads(response.content)
    assert b"[DONE]" not in payloads
    events = chunks(payloads)
    assert len(events) == 1 + 3
    assert all(event["choices"][0]["finish_reason"] is None for event in events)


async def test_disconnect_fault_aborts_the_response_in_the_server(make_client: MakeClient) -> None:
    client = make_client(simulator())

    with pytest.raises(SimulatedDisconnect):
        await client.post("/v1/chat/completions", json=chat_body(simulator={"fault": "disconnect"}))


async def test_disconnect_fault_after_all_tokens_still_omits_the_finish(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=2), raise_app_exceptions=False)
    body = chat_body(stream=True, simulator={"fault": "disconnect", "fault_after_tokens": 50})

    payloads = sse_payloads((await client.post("/v1/chat/completions", json=body)).content)

    assert b"[DONE]" not in payloads
    assert len(chunks(payloads)) == 1 + 2


async def test_unknown_model_is_404_model_not_found(make_client: MakeClient) -> None:
    client = make_client(simulator())

    response = await client.post("/v1/chat/completions", json={"model": "nope", "messages": PROMPT})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
async def test_body_that_is_not_a_json_object_is_400(make_client: MakeClient, content: bytes) -> None:
    client = make_client(simulator())

    response = await client.post("/v1/chat/completions", content=content)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


async def test_invalid_field_is_400_naming_the_param(make_client: MakeClient) -> None:
    client = make_client(simulator())

    response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=-1))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


async def test_api_key_is_required_when_configured(make_client: MakeClient) -> None:
    app = simulator(api_key="sim-secret")
    anonymous = make_client(app)
    wrong = make_client(app, authorization="Bearer other")
    right = make_client(app, authorization="Bearer sim-secret")

    assert (await anonymous.post("/v1/chat/completions", json=chat_body())).status_code == 401
    denied = await wrong.post("/v1/chat/completions", json=chat_body())
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    assert (await wrong.get("/v1/models")).status_code == 401
    assert (await right.post("/v1/chat/completions", json=chat_body())).status_code == 200
    assert (await right.get("/v1/models")).status_code == 200
    assert (await anonymous.get("/healthz")).status_code == 200


async def test_models_are_listed_in_openai_shape(make_client: MakeClient) -> None:
    client = make_client(simulator(models=["a", "b"]))

    body = (await client.get("/v1/models")).json()

    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["a", "b"]
    assert all(model["object"] == "model" for model in body["data"])


async def test_health_and_unknown_paths(make_client: MakeClient) -> None:
    client = make_client(simulator())

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_stats_count_requests_and_streams_close(make_client: MakeClient) -> None:
    app = simulator()
    client = make_client(app)

    await client.post("/v1/chat/completions", json=chat_body())
    await client.post("/v1/chat/completions", json=chat_body(stream=True))

    assert (await client.get("/stats")).json() == {
        "requests_total": 2,
        "active_streams": 0,
        "last_request_body": chat_body(stream=True),
    }
    assert app.state.requests_total == 2


async def test_stats_show_the_latest_request_body_as_received(make_client: MakeClient) -> None:
    client = make_client(simulator())
    assert (await client.get("/stats")).json()["last_request_body"] is None
    sent = chat_body(
        temperature=0.3,
        seed=42,
        logit_bias={"1234": -50},
        user="u-1",
        top_k=5,
        extra={"nested": [1, 2.5, None, "é"]},
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )

    await client.post("/v1/chat/completions", json=sent)
    first = (await client.get("/stats")).json()["last_request_body"]
    rejected = await client.post("/v1/chat/completions", json=chat_body(n=0))
    second = (await client.get("/stats")).json()["last_request_body"]

    assert first == sent
    assert rejected.status_code == 400
    assert second == chat_body(n=0)


async def test_ttft_delays_the_non_stream_reply(make_client: MakeClient) -> None:
    client = make_client(simulator())
    started = time.perf_counter()

    response = await client.post("/v1/chat/completions", json=chat_body(simulator={"ttft_ms": 150}))

    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.15


async def test_tokens_per_second_paces_the_stream(make_client: MakeClient) -> None:
    client = make_client(simulator())
    body = chat_body(stream=True, simulator={"reply_tokens": 5, "tokens_per_second": 20, "ttft_ms": 50})
    started = time.perf_counter()

    response = await client.post("/v1/chat/completions", json=body)

    elapsed = time.perf_counter() - started
    assert sse_payloads(response.content)[-1] == b"[DONE]"
    assert 0.05 + 4 / 20 <= elapsed < 2


class RawExchange:
    """One request to the app over raw ASGI, where the test decides when the client disconnects."""

    def __init__(self, app: Starlette, body: dict[str, Any]) -> None:
        self.app = app
        self.body = orjson.dumps(body)
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self.first_body = asyncio.Event()
        self._body_delivered = False

    async def receive(self) -> Message:
        if not self._body_delivered:
            self._body_delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if not self.gone.is_set():
            self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_body.set()

    def run(self) -> asyncio.Task[None]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("sim", 80),
        }
        return asyncio.create_task(self.app(scope, self.receive, self.send))


async def test_hang_fault_never_answers_and_ends_when_the_client_leaves() -> None:
    exchange = RawExchange(simulator(), chat_body(simulator={"fault": "hang"}))
    task = exchange.run()

    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done
    assert exchange.sent == []

    exchange.gone.set()
    await asyncio.wait_for(task, timeout=1)
    assert exchange.sent == []


async def test_client_disconnect_stops_a_slow_stream_and_closes_it() -> None:
    app = simulator()
    body = chat_body(stream=True, simulator={"reply_tokens": 1000, "tokens_per_second": 10})
    exchange = RawExchange(app, body)
    task = exchange.run()
    await asyncio.wait_for(exchange.first_body.wait(), timeout=1)
    assert app.state.active_streams == 1

    exchange.gone.set()
    await asyncio.wait_for(task, timeout=1)

    assert app.state.active_streams == 0
    assert not any(b"[DONE]" in message.get("body", b"") for message in exchange.sent)


async def test_client_disconnect_during_ttft_abandons_the_non_stream_reply() -> None:
    exchange = RawExchange(simulator(), chat_body(simulator={"ttft_ms": 60_000}))
    task = exchange.run()
    await asyncio.sleep(0.05)

    exchange.gone.set()

    await asyncio.wait_for(task, timeout=1)
    assert exchange.sent == []


@contextlib.asynccontextmanager
async def openai_sdk(app: Starlette) -> AsyncIterator[openai.AsyncOpenAI]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http_client:
        # The SDK is typed for httpx2 clients but accepts httpx ones, which have the ASGI transport.
        yield openai.AsyncOpenAI(
            base_url="http://sim/v1",
            api_key="x",
            http_client=http_client,  # type: ignore[arg-type]
            max_retries=0,
        )


async def test_openai_sdk_reads_stream_and_non_stream() -> None:
    async with openai_sdk(simulator(reply_tokens=6)) as sdk:
        whole = await sdk.chat.completions.create(model="demo-model", messages=SDK_PROMPT)
        stream = await sdk.chat.completions.create(
            model="demo-model",
            messages=SDK_PROMPT,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage

    assert whole.id.startswith("chatcmpl-sim-")
    assert whole.choices[0].message.content == "".join(pieces)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 6
    assert usage is not None
    assert usage.completion_tokens == 6


async def test_openai_sdk_surfaces_the_error_fault() -> None:
    async with openai_sdk(simulator()) as sdk:
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(
                model="demo-model",
                messages=SDK_PROMPT,
                extra_body={"simulator": {"fault": "error", "fault_status": 500}},
            )


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_SIMULATOR_MODELS", '["m1", "m2"]')
    monkeypatch.setenv("CS_SIMULATOR_TTFT_MS", "25")
    monkeypatch.setenv("CS_SIMULATOR_FAULT", "disconnect")
    monkeypatch.setenv("CS_SIMULATOR_API_KEY", "k")

    settings = SimulatorSettings()

    assert settings.models == ["m1", "m2"]
    assert settings.ttft_ms == 25
    assert settings.fault == "disconnect"
    assert settings.api_key == "k"
    assert (settings.host, settings.port, settings.reply_tokens) == ("127.0.0.1", 9100, 16)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 7}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": 3}}]}, "tools.0.function.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
async def test_invalid_feature_parameters_are_400_naming_the_param(
    make_client: MakeClient, fields: dict[str, Any], param: str
) -> None:
    client = make_client(simulator())

    response = await client.post("/v1/chat/completions", json=chat_body(**fields))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[0] in error["message"]


async def test_other_openai_parameters_are_accepted_and_ignored(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=5))
    plain = (await client.post("/v1/chat/completions", json=chat_body())).json()
    ignored = {
        "temperature": 0,
        "top_p": 0.1,
        "seed": 1,
        "user": "u",
        "logit_bias": {"1": 5},
        "presence_penalty": 1,
        "frequency_penalty": -1,
        "top_k": 3,
        "repetition_penalty": 1.2,
        "min_p": 0.05,
        "store": False,
        "metadata": {"a": "b"},
        "modalities": ["text"],
        "verbosity": "low",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "service_tier": "default",
        "web_search_options": {},
        "prediction": None,
    }

    response = await client.post("/v1/chat/completions", json=chat_body(**ignored))

    assert response.status_code == 200
    assert response.json()["choices"] == plain["choices"]


async def test_n_choices_stream_interleaved_each_with_its_own_finish(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=3))
    whole = (await client.post("/v1/chat/completions", json=chat_body(n=2))).json()
    body = chat_body(n=2, stream=True, stream_options={"include_usage": True})

    events = chunks(sse_payloads((await client.post("/v1/chat/completions", json=body)).content))

    *choice_events, usage_event = events
    assert [len(event["choices"]) for event in choice_events] == [1] * len(choice_events)
    indexes = [event["choices"][0]["index"] for event in choice_events]
    assert indexes == [0, 1] * (1 + 3 + 1)
    finishes = [event["choices"][0] for event in choice_events if event["choices"][0]["finish_reason"]]
    assert [(choice["index"], choice["finish_reason"]) for choice in finishes] == [(0, "stop"), (1, "stop")]
    for index in (0, 1):
        text = "".join(
            event["choices"][0]["delta"].get("content") or ""
            for event in choice_events
            if event["choices"][0]["index"] == index
        )
        assert text == whole["choices"][index]["message"]["content"]
    assert whole["choices"][0]["message"]["content"] != whole["choices"][1]["message"]["content"]
    assert usage_event["choices"] == []
    assert usage_event["usage"]["completion_tokens"] == 6 == whole["usage"]["completion_tokens"]


async def test_choices_cut_by_stop_at_different_lengths_finish_separately(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=8))
    whole = (await client.post("/v1/chat/completions", json=chat_body(n=2))).json()
    second_choice_words = whole["choices"][1]["message"]["content"].split(" ")
    stop = " " + second_choice_words[2]

    streamed = await client.post("/v1/chat/completions", json=chat_body(n=2, stop=stop, stream=True))
    events = chunks(sse_payloads(streamed.content))
    cut = (await client.post("/v1/chat/completions", json=chat_body(n=2, stop=stop))).json()

    assert cut["choices"][1]["message"]["content"] == " ".join(second_choice_words[:2])
    assert all(choice["finish_reason"] == "stop" for choice in cut["choices"])
    finishes = [event["choices"][0]["index"] for event in events if event["choices"][0]["finish_reason"]]
    assert finishes == [0, 1]
    for index in (0, 1):
        text = "".join(
            event["choices"][0]["delta"].get("content") or ""
            for event in events
            if event["choices"][0]["index"] == index
        )
        assert text == cut["choices"][index]["message"]["content"]


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


async def test_tool_call_stream_starts_each_call_then_streams_its_arguments(make_client: MakeClient) -> None:
    client = make_client(simulator())
    whole = (await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER_TOOL, TIME_TOOL]))).json()
    body = chat_body(tools=[WEATHER_TOOL, TIME_TOOL], stream=True)

    events = chunks(sse_payloads((await client.post("/v1/chat/completions", json=body)).content))

    weather, clock = whole["choices"][0]["message"]["tool_calls"]
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"index": 0, "id": weather["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ],
    }
    second_start = next(i for i, delta in enumerate(deltas) if i and "id" in delta.get("tool_calls", [{}])[0])
    assert deltas[second_start] == {
        "tool_calls": [
            {"index": 1, "id": clock["id"], "type": "function", "function": {"name": "get_time", "arguments": ""}}
        ]
    }
    first_pieces = [delta["tool_calls"][0] for delta in deltas[1:second_start]]
    second_pieces = [delta["tool_calls"][0] for delta in deltas[second_start + 1 : -1]]
    assert all(set(piece) == {"index", "function"} and piece["index"] == 0 for piece in first_pieces)
    assert all(piece["index"] == 1 for piece in second_pieces)
    assert len(first_pieces) > 1
    assert "".join(piece["function"]["arguments"] for piece in first_pieces) == weather["function"]["arguments"]
    assert "".join(piece["function"]["arguments"] for piece in second_pieces) == clock["function"]["arguments"]
    assert deltas[-1] == {}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert whole["choices"][0]["message"]["content"] is None


async def test_openai_sdk_reads_tool_calls_whole_and_streamed() -> None:
    tools: Any = [WEATHER_TOOL, TIME_TOOL]
    async with openai_sdk(simulator()) as sdk:
        whole = await sdk.chat.completions.create(model="demo-model", messages=SDK_PROMPT, tools=tools)
        stream = await sdk.chat.completions.create(model="demo-model", messages=SDK_PROMPT, tools=tools, stream=True)
        streamed: dict[int, dict[str, str]] = {}
        finish_reason = None
        async for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or []:
                entry = streamed.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                assert call.function is not None
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish_reason = chunk.choices[0].finish_reason or finish_reason

    [choice] = whole.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [call.type for call in calls] == ["function", "function"]
    functions = [call.function for call in calls if call.type == "function"]
    assert [function.name for function in functions] == ["get_weather", "get_time"]
    arguments = orjson.loads(functions[0].arguments)
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] == "celsius"
    assert streamed == {
        index: {"id": call.id, "name": function.name, "arguments": function.arguments}
        for index, (call, function) in enumerate(zip(calls, functions, strict=True))
    }
    assert finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": "required"}, ["get_weather"]),
        ({"parallel_tool_calls": False}, ["get_weather"]),
        ({"tool_choice": "auto"}, ["get_weather", "get_time"]),
    ],
)
async def test_tool_choice_picks_the_calls(make_client: MakeClient, fields: dict[str, Any], names: list[str]) -> None:
    client = make_client(simulator())

    body = (await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER_TOOL, TIME_TOOL], **fields))).json()

    calls = body["choices"][0]["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == names
    assert body["usage"]["completion_tokens"] == sum(max(1, len(call["function"]["arguments"]) // 4) for call in calls)


async def test_tool_choice_none_and_a_tool_result_get_text(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=4))
    after_tool = [
        *PROMPT,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12°C and sunny"},
    ]

    declined = await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER_TOOL], tool_choice="none"))
    answered = await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER_TOOL], messages=after_tool))

    for response in (declined, answered):
        [choice] = response.json()["choices"]
        assert choice["finish_reason"] == "stop"
        assert "tool_calls" not in choice["message"]
        assert len(choice["message"]["content"].split(" ")) == 4


AFTER_A_TOOL_RESULT: list[dict[str, Any]] = [
    *PROMPT,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Validation error: city and unit are required."},
]


@pytest.mark.parametrize(
    ("tool_choice", "tool"),
    [("required", WEATHER_TOOL), ({"type": "function", "function": {"name": "get_time"}}, TIME_TOOL)],
    ids=["required", "named"],
)
async def test_a_forced_tool_is_called_after_a_tool_result_whole_and_streamed(
    make_client: MakeClient, tool_choice: Any, tool: Any
) -> None:
    client = make_client(simulator())
    body = chat_body(messages=AFTER_A_TOOL_RESULT, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice)

    whole = (await client.post("/v1/chat/completions", json=body)).json()
    events = chunks(sse_payloads((await client.post("/v1/chat/completions", json={**body, "stream": True})).content))

    [choice] = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == tool["function"]["name"]
    jsonschema.validate(orjson.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0]["tool_calls"] == [
        {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
    ]
    pieces = [delta["tool_calls"][0]["function"]["arguments"] for delta in deltas[1:-1]]
    assert "".join(pieces) == call["function"]["arguments"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_agent_loop_with_auto_tools_reaches_a_final_answer(stream: bool) -> None:
    """An agent (the Agents SDK's Chat Completions model, say) calls the tools the model asks for until it answers."""
    tools: Any = [WEATHER_TOOL, TIME_TOOL]
    messages: list[Any] = list(SDK_PROMPT)
    turns: list[openai.types.chat.ChatCompletion] = []
    async with openai_sdk(simulator(reply_tokens=5)) as sdk:
        while len(turns) < 5:
            if stream:
                async with sdk.chat.completions.stream(model="demo-model", messages=messages, tools=tools) as events:
                    turn: openai.types.chat.ChatCompletion = await events.get_final_completion()
            else:
                turn = await sdk.chat.completions.create(model="demo-model", messages=messages, tools=tools)
            turns.append(turn)
            message = turn.choices[0].message
            calls = [call for call in message.tool_calls or [] if call.type == "function"]
            if not calls:
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": call.id, "type": "function", "function": call.function.model_dump()} for call in calls
                    ],
                }
            )
            messages.extend({"role": "tool", "tool_call_id": call.id, "content": "12°C and sunny"} for call in calls)

    assert [turn.choices[0].finish_reason for turn in turns] == ["tool_calls", "stop"]
    assert len(messages) == 1 + 1 + 2
    final = turns[-1].choices[0].message
    assert final.tool_calls in (None, [])
    assert len((final.content or "").split(" ")) == 5


async def test_named_tool_missing_from_tools_is_400(make_client: MakeClient) -> None:
    client = make_client(simulator())
    choice = {"type": "function", "function": {"name": "launch"}}

    response = await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER_TOOL], tool_choice=choice))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "integer", "minimum": -50},
        "conditions": {"type": "array", "items": {"$ref": "#/$defs/condition"}},
        "alert": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["city", "temperature", "conditions", "alert"],
    "additionalProperties": False,
    "$defs": {"condition": {"type": "string", "enum": ["sunny", "rain"]}},
}


async def test_json_schema_content_validates_whole_and_streamed(make_client: MakeClient) -> None:
    client = make_client(simulator())
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": ANSWER_SCHEMA, "strict": True},
    }

    whole = (await client.post("/v1/chat/completions", json=chat_body(response_format=response_format))).json()
    streamed = await client.post("/v1/chat/completions", json=chat_body(response_format=response_format, stream=True))

    content = whole["choices"][0]["message"]["content"]
    jsonschema.validate(orjson.loads(content), ANSWER_SCHEMA)
    pieces = [event["choices"][0]["delta"].get("content") for event in chunks(sse_payloads(streamed.content))]
    tokens = [piece for piece in pieces[1:] if piece]
    assert "".join(tokens) == content
    assert len(tokens) == whole["usage"]["completion_tokens"] > 5


async def test_openai_sdk_parses_structured_output_and_json_mode() -> None:
    class Weather(pydantic.BaseModel):
        city: str
        temperature: int
        raining: bool

    async with openai_sdk(simulator(reply_tokens=5)) as sdk:
        parsed = await sdk.chat.completions.parse(model="demo-model", messages=SDK_PROMPT, response_format=Weather)
        json_mode = await sdk.chat.completions.create(
            model="demo-model", messages=SDK_PROMPT, response_format={"type": "json_object"}
        )

    weather = parsed.choices[0].message.parsed
    assert weather is not None
    assert (weather.temperature, weather.raining) == (1, True)
    assert len(weather.city.split()) == 3
    answer = orjson.loads(json_mode.choices[0].message.content or "")
    assert set(answer) == {"answer"}
    assert len(answer["answer"].split(" ")) == 5


class Condition(enum.StrEnum):
    SUNNY = "sunny"
    RAIN = "rain"


class Reading(pydantic.BaseModel):
    condition: Condition
    observed: datetime.datetime
    wind_kmh: int | None = pydantic.Field(ge=0)


class Forecast(pydantic.BaseModel):
    """A structured output as the Agents SDK's output_type or instructor would ask for: $defs, $ref, anyOf."""

    city: str
    now: Reading
    later: list[Reading] = pydantic.Field(min_length=2)
    warning: Reading | None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_openai_sdk_parses_a_nested_pydantic_output(stream: bool) -> None:
    async with openai_sdk(simulator()) as sdk:
        if stream:
            async with sdk.chat.completions.stream(
                model="demo-model", messages=SDK_PROMPT, response_format=Forecast
            ) as events:
                parsed = await events.get_final_completion()
        else:
            parsed = await sdk.chat.completions.parse(model="demo-model", messages=SDK_PROMPT, response_format=Forecast)

    forecast = parsed.choices[0].message.parsed
    assert forecast is not None
    assert forecast.now.condition is Condition.SUNNY
    assert forecast.now.observed.tzinfo is not None
    assert len(forecast.later) == 2
    assert forecast.warning is not None


async def test_openai_sdk_reads_logprobs_whole_and_streamed() -> None:
    async with openai_sdk(simulator(reply_tokens=4)) as sdk:
        whole = await sdk.chat.completions.create(
            model="demo-model", messages=SDK_PROMPT, logprobs=True, top_logprobs=2, n=2
        )
        stream = await sdk.chat.completions.create(
            model="demo-model", messages=SDK_PROMPT, logprobs=True, top_logprobs=2, n=2, stream=True
        )
        streamed: dict[int, list[Any]] = {0: [], 1: []}
        async for chunk in stream:
            for delta in chunk.choices:
                if delta.logprobs is not None and delta.logprobs.content:
                    streamed[delta.index].extend(delta.logprobs.content)

    assert len(whole.choices) == 2
    for choice in whole.choices:
        assert choice.logprobs is not None
        entries = choice.logprobs.content or []
        assert "".join(entry.token for entry in entries) == choice.message.content
        assert all(len(entry.top_logprobs) == 2 for entry in entries)
        assert all(entry.top_logprobs[0].logprob < entry.logprob for entry in entries)
        assert all(bytes(entry.bytes or []).decode() == entry.token for entry in entries)
        assert streamed[choice.index] == entries


async def test_without_logprobs_the_field_stays_null(make_client: MakeClient) -> None:
    client = make_client(simulator())

    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    streamed = chunks(sse_payloads((await client.post("/v1/chat/completions", json=chat_body(stream=True))).content))

    assert whole["choices"][0]["logprobs"] is None
    assert all(event["choices"][0]["logprobs"] is None for event in streamed)


async def test_reasoning_streams_before_content_and_is_billed(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=3))
    body = chat_body(reasoning_effort="low", stream=True, stream_options={"include_usage": True})

    whole = (await client.post("/v1/chat/completions", json=chat_body(reasoning_effort="low"))).json()
    events = chunks(sse_payloads((await client.post("/v1/chat/completions", json=body)).content))

    message = whole["choices"][0]["message"]
    assert len(message["reasoning_content"].split(" ")) == 4
    deltas = [event["choices"][0]["delta"] for event in events[:-1]]
    kinds = [next(iter(delta), None) for delta in deltas]
    assert kinds == ["role", *["reasoning_content"] * 4, *["content"] * 3, None]
    assert "".join(delta.get("reasoning_content", "") for delta in deltas) == message["reasoning_content"]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 7 == whole["usage"]["completion_tokens"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 4}


async def test_reasoning_tokens_per_request_and_none_effort(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=3))

    forced = (await client.post("/v1/chat/completions", json=chat_body(simulator={"reasoning_tokens": 6}))).json()
    off = (await client.post("/v1/chat/completions", json=chat_body(reasoning_effort="none"))).json()

    assert len(forced["choices"][0]["message"]["reasoning_content"].split(" ")) == 6
    assert forced["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}
    assert "reasoning_content" not in off["choices"][0]["message"]
    assert off["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_cached_tokens_are_reported_as_asked_whole_and_streamed(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=3))
    asked = {"simulator": {"cached_tokens": 5}}

    whole = (await client.post("/v1/chat/completions", json=chat_body(**asked))).json()
    streamed = {**chat_body(**asked), "stream": True, "stream_options": {"include_usage": True}}
    events = chunks(sse_payloads((await client.post("/v1/chat/completions", json=streamed)).content))
    # A lying hoster: more cached tokens than the prompt has, reported as asked.
    lying = (await client.post("/v1/chat/completions", json=chat_body(simulator={"cached_tokens": 10**6}))).json()

    assert whole["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    assert lying["usage"]["prompt_tokens_details"] == {"cached_tokens": 10**6}
    assert lying["usage"]["prompt_tokens"] < 10**6


async def test_stop_sequence_cuts_the_reply_whole_and_streamed(make_client: MakeClient) -> None:
    client = make_client(simulator(reply_tokens=10))
    words = (await client.post("/v1/chat/completions", json=chat_body())).json()["choices"][0]["message"]["content"]
    stop = " " + words.split(" ")[4]
    expected = words[: words.index(stop)]

    whole = (await client.post("/v1/chat/completions", json=chat_body(stop=[stop]))).json()
    streamed = await client.post("/v1/chat/completions", json=chat_body(stop=stop, stream=True))

    assert whole["choices"][0]["message"]["content"] == expected
    assert whole["choices"][0]["finish_reason"] == "stop"
    events = chunks(sse_payloads(streamed.content))
    assert "".join(event["choices"][0]["delta"].get("content", "") for event in events) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
