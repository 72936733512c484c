"""The simulator's HTTP behaviour, through httpx's ASGI transport and the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import orjson
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

    assert (await client.get("/stats")).json() == {"requests_total": 2, "active_streams": 0}
    assert app.state.requests_total == 2


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
