"""``POST /v1/responses`` through the ingress app with the bus answered in process (a key check, billing's stored
responses, a router and a hoster's answer): what is routed, what is stored, what the client is told."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from nats.errors import MaxPayloadError, NoRespondersError

from libs.contracts import frames, subjects
from libs.contracts.billing import INFERENCE, KeyInfo
from libs.contracts.stored_responses import ResponseChain, Stored
from services.ingress.app import build_app
from services.ingress.gateway import Gateway
from services.ingress.settings import IngressSettings
from tests.unit.ingress.inprocess_bus import InProcessBus, Msg

KEY = "ngk_" + "a" * 40
MAX_PAYLOAD = 1024 * 1024
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


class Bus(InProcessBus):
    """NATS as the ingress sees it, answered in process: a message over ``max_payload`` is refused as nats-py
    refuses it (``MaxPayloadError``); one valid key, billing's chain (``chain``) and stores (``stored``), and a
    router that routes (``routed``) to a hoster answering ``ANSWER``."""

    max_payload = MAX_PAYLOAD

    def __init__(self, chain: list[dict[str, Any]] | None = None, text: str = "hello") -> None:
        super().__init__()
        self.chain = chain or []
        self.text = text
        self.store_away = False
        # What the hoster's JSON says in place of ``text`` (what orjson cannot write: a lone surrogate, say).
        self.raw_text: bytes | None = None
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def sent(self, subject: str) -> list[dict[str, Any]]:
        return [body for asked, body in self.asked if asked == subject]

    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
        if len(data) > self.max_payload:
            raise MaxPayloadError

    async def request(self, subject: str, data: bytes, **_: Any) -> Msg:
        await self.publish(subject, data)
        body = orjson.loads(data)
        self.asked.append((subject, body))
        if subject == subjects.VERIFY_KEY:
            return Msg(
                subject,
                KeyInfo(status="valid", key_id="k1", account_id="a1", kind=INFERENCE).model_dump_json().encode(),
            )
        if subject == subjects.RESPONSE_CHAIN:
            return Msg(subject, ResponseChain(found=True, items=self.chain).model_dump_json().encode())
        if subject == subjects.STORE_RESPONSE and self.store_away:
            raise NoRespondersError
        if subject == subjects.STORE_RESPONSE:
            return Msg(subject, Stored(ok=True).model_dump_json().encode())
        assert subject == subjects.ROUTE_REQUEST
        return self.accept(subject, body, lambda offer: self.frames(offer, bool(body["stream"])))

    def frames(self, offer: str, stream: bool) -> list[Msg]:
        """The hoster's answer, saying ``text``: one completion, or a chunk and the end of the stream."""
        if not stream:
            message = {"role": "assistant", "content": self.text}
            completion = ANSWER | {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
            return [Msg(offer, frames.encode(frames.COMPLETION, 1, 0, self.raw(completion)))]
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "usage": ANSWER["usage"],
                 "choices": [{"index": 0, "delta": {"content": self.text}, "finish_reason": "stop"}]}  # fmt: skip
        return [Msg(offer, frames.encode(frames.CHUNK, 1, 0, self.raw(chunk))),
                Msg(offer, frames.encode(frames.END, 1, 1))]  # fmt: skip

    def raw(self, doc: dict[str, Any]) -> bytes:
        encoded = orjson.dumps(doc)
        return encoded if self.raw_text is None else encoded.replace(orjson.dumps(self.text), self.raw_text)


async def create(bus: Bus, body: dict[str, Any]) -> httpx.Response:
    app: FastAPI = build_ingress()
    gateway: Gateway = app.state.gateway
    await gateway.open(bus)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        return await client.post("/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"})


def build_ingress() -> FastAPI:
    return build_app(IngressSettings(metrics_port=0, instance_id="ing"))


def user_message(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": text}]}  # fmt: skip


async def test_a_conversation_too_large_to_route_is_a_400_and_nothing_is_routed() -> None:
    """The replayed conversation is not held to the body limit: with the new input, it can outgrow what one
    NATS message carries. That is the client's 400 before any hoster is asked, not a 500."""
    bus = Bus(chain=[user_message("msg_old", "x" * 600_000)])
    answer = await create(bus, {"model": "m", "input": "y" * 600_000, "previous_response_id": "resp_1"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "previous_response_id", "conversation_too_long"
    )  # fmt: skip
    assert bus.sent(subjects.ROUTE_REQUEST) == []
    [query] = bus.sent(subjects.RESPONSE_CHAIN)
    # Billing is told how much of the conversation the ingress can route, so that it never answers more.
    assert 0 < query["max_bytes"] <= MAX_PAYLOAD


@pytest.mark.parametrize(
    "private", [{"privacy_mode": True}, {"provider": {"data_collection": "deny"}}], ids=["ours", "openrouter's"]
)
async def test_a_privacy_mode_response_is_stored_only_when_asked_and_says_so(private: dict[str, Any]) -> None:
    """Privacy mode in either dialect (OpenRouter's ``provider.data_collection: "deny"`` is routed as ours)."""
    bus = Bus()
    unasked = await create(bus, {"model": "m", "input": "secret"} | private)
    assert unasked.status_code == 200, unasked.text
    assert unasked.json()["store"] is False
    assert bus.sent(subjects.STORE_RESPONSE) == []
    asked = await create(bus, {"model": "m", "input": "keep it", "store": True} | private)
    assert asked.json()["store"] is True
    [stored] = bus.sent(subjects.STORE_RESPONSE)
    assert stored["response"]["store"] is True


def events(stream: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]


async def test_a_response_too_large_to_store_is_answered_all_the_same_and_says_it_is_not_stored() -> None:
    """The input and the answer may each fit a message and not together: the client was served and is billed,
    so it gets its answer, with ``store: false``, rather than a 500 (or a stream cut before its last event)."""
    big = {"model": "m", "input": "x" * 500_000}
    bus = Bus(text="y" * 600_000)
    whole = await create(bus, big)
    assert whole.status_code == 200, whole.text
    assert whole.json()["store"] is False
    assert whole.json()["output"][0]["content"][0]["text"] == bus.text
    streamed = await create(bus, big | {"stream": True})
    assert streamed.status_code == 200
    final = events(streamed)[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["store"] is False
    assert bus.sent(subjects.STORE_RESPONSE) == []
    # One that fits is stored, as the client was told.
    small = await create(bus := Bus(), {"model": "m", "input": "hi", "stream": True})
    assert events(small)[-1]["response"]["store"] is True
    [stored] = bus.sent(subjects.STORE_RESPONSE)
    assert stored["response"] == events(small)[-1]["response"]


async def test_a_response_billing_cannot_store_is_answered_all_the_same_and_says_it_is_not_stored() -> None:
    """Billing away when the Response is to be stored: the client was served and is billed, so it gets its
    answer (an error would have its SDK retry, and pay, again), with ``store: false``; a stream ends completed."""
    bus = Bus()
    bus.store_away = True
    whole = await create(bus, {"model": "m", "input": "hi"})
    assert whole.status_code == 200, whole.text
    assert whole.json()["store"] is False
    answer = await create(bus, {"model": "m", "input": "hi", "stream": True})
    sent = events(answer)
    assert [event["sequence_number"] for event in sent] == list(range(len(sent)))
    assert sent[-1]["type"] == "response.completed"
    assert sent[-1]["response"]["store"] is False


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_hosters_lone_surrogate_is_replaced_not_a_500(stream: bool) -> None:
    """JSON the usage guard reads (Python's json) but orjson does not, a hoster's lone surrogate: the answer is
    translated with U+FFFD in its place, never a 500 or a stream cut short."""
    bus = Bus(text="PLACEHOLDER")
    bus.raw_text = b'"\\ud83d!"'
    answer = await create(bus, {"model": "m", "input": "hi", "stream": stream})
    assert answer.status_code == 200, answer.text
    response = events(answer)[-1]["response"] if stream else answer.json()
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "\ufffd!"
