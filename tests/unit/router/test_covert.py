"""The router's covert requests (probes): drawn like clients', shaped exactly like a client's request as the
ingress builds it, and their answers, streamed or not, judged on the request's own bounds."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.contracts import frames, subjects
from libs.contracts.common import Usage
from libs.contracts.openai import ChatCompletionRequest, hoster_body
from libs.contracts.pricing import UsageBounds
from libs.contracts.routing import RouteRequest, RoutingPreferences
from libs.platform.ids import instance_id, new_request_id
from services.router.covert import (
    DEFAULT_PROMPTS,
    Answer,
    CovertRequest,
    PromptPool,
    RecentIngresses,
    check_answer,
    covert_request,
    fresh_ingress_id,
)
from services.router.service import RequestProfile

DEFAULT_MAX_TOKENS = 4096
POOL = PromptPool.load(DEFAULT_PROMPTS)
REQUEST_ID = re.compile(r"chatcmpl-[0-9a-f]{32}")
INGRESS_ID = re.compile(r"ingress-[A-Za-z0-9_-]+-[0-9]+")


def draws(count: int = 300, ingresses: RecentIngresses | None = None, seed: int = 7) -> list[CovertRequest]:
    rng = random.Random(seed)
    return [covert_request("m", POOL, ingresses or RecentIngresses(), DEFAULT_MAX_TOKENS, rng) for _ in range(count)]


def test_the_shipped_pool_holds_varied_natural_conversations() -> None:
    assert len(POOL) >= 50
    lengths = [len(orjson.dumps(POOL.draw(random.Random(n)))) for n in range(200)]
    assert min(lengths) < 80 < 300 < max(lengths)


def test_a_pool_file_that_is_no_pool_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '"What is a monad?"\n\n[{"role": "user", "content": "hi"}]\n[{"role": "assistant", "content": "x"}]\n'
    )
    with pytest.raises(ValueError, match=r"prompts.jsonl:4: the last message is not the user's"):
        PromptPool.load(path)
    path.write_text("")
    with pytest.raises(ValueError, match="at least one"):
        PromptPool.load(path)


def test_drawn_requests_vary_like_clients_do() -> None:
    bodies = [d.route.body for d in draws()]
    assert len({orjson.dumps(b["messages"]) for b in bodies}) > 40
    limits = [b.get("max_tokens", b.get("max_completion_tokens")) for b in bodies]
    assert len(set(limits)) > 10
    assert None in limits  # some set no limit at all
    assert any("max_completion_tokens" in b for b in bodies)
    assert {b.get("stream") for b in bodies} == {True, False, None}
    streamed = [b for b in bodies if b.get("stream")]
    assert 0 < sum("stream_options" in b for b in streamed) < len(streamed)
    assert 0 < sum("temperature" in b for b in bodies) < len(bodies)
    assert 0 < sum("top_p" in b for b in bodies) < len(bodies)
    assert len({d.route.request_id for d in draws(50)}) == 50


def test_a_covert_request_is_shaped_as_the_ingress_shapes_a_clients() -> None:
    ingress_id = instance_id("", "ingress")  # a real ingress's id, as its process makes it
    seen = RecentIngresses()
    seen.saw(subjects.reply_subject(ingress_id, new_request_id()))
    for drawn in draws(200, seen):
        route, body = drawn.route, drawn.route.body
        # The ingress's own reading of the same JSON from a client: valid, nothing unknown, nothing to route
        # on, and the hoster gets exactly it.
        request = ChatCompletionRequest.model_validate(body)
        assert request.model_extra == {}
        assert hoster_body(body) == body
        options = request.stream_options
        client = RouteRequest(
            request_id=route.request_id,
            reply_subject=subjects.reply_subject(ingress_id, route.request_id),
            model=request.routed_model,
            stream=bool(request.stream),
            include_usage=bool(request.stream and options is not None and options.include_usage),
            created=route.created,
            routing=request.routing(),
            body=hoster_body(body),
        )
        assert route == client
        assert request.routing() == RoutingPreferences()
        assert REQUEST_ID.fullmatch(route.request_id)
        token = subjects.offer_of(route.reply_subject, drawn.reply)
        assert token is not None
        assert re.fullmatch(r"1\.[0-9a-f]{24}", token)  # a first offer's subject
        # What routing derives from a client's body, derived alike.
        assert drawn.prompt_tokens == RequestProfile.of(body, DEFAULT_MAX_TOKENS).prompt_tokens
        assert drawn.bounds == UsageBounds.of(body, len(orjson.dumps(body)), DEFAULT_MAX_TOKENS)


def test_the_ingress_named_is_one_of_recent_traffic_as_often_as_it_sends() -> None:
    seen = RecentIngresses(size=32)
    for n in range(32):
        seen.saw(subjects.reply_subject("ingress-a-1" if n % 4 else "ingress-b-1", new_request_id()))
    seen.saw("not.a.reply")
    picks = [subjects.ingress_of(d.route.reply_subject) for d in draws(400, seen)]
    assert set(picks) == {"ingress-a-1", "ingress-b-1"}
    assert 0.6 < picks.count("ingress-a-1") / len(picks) < 0.9  # three requests in four came through a
    for _ in range(32):
        seen.saw(subjects.reply_subject("ingress-c-1", new_request_id()))
    assert {subjects.ingress_of(d.route.reply_subject) for d in draws(50, seen)} == {"ingress-c-1"}


def test_before_any_traffic_the_ingress_id_is_fresh_and_shaped_like_an_instance_id() -> None:
    ids = {subjects.ingress_of(d.route.reply_subject) for d in draws(20)}
    assert all(i is not None and INGRESS_ID.fullmatch(i) for i in ids)
    assert len(ids) == 20
    assert fresh_ingress_id(random.Random(1)) != instance_id("", "ingress")


def covert(stream: bool = False, include_usage: bool = False, max_tokens: int = 16) -> CovertRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    route = RouteRequest(request_id=new_request_id(), reply_subject=subjects.reply_subject("ingress-x-1", "r"),
                         model="m", stream=stream, include_usage=include_usage, created=0,
                         routing=RoutingPreferences(), body=body)  # fmt: skip
    bounds = UsageBounds.of(body, len(orjson.dumps(body)), DEFAULT_MAX_TOKENS)
    return CovertRequest(route, route.reply_subject + ".1.t", 6, bounds)


def completion(content: Any = "The sea is wide.", prompt: Any = 14, completion: Any = 5, **extra: Any) -> bytes:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}], **extra}  # fmt: skip
    return orjson.dumps(body)


def chunk(content: str | None = None, usage: dict[str, int] | None = None, index: int = 0, **extra: Any) -> bytes:
    choices = [] if content is None else [{"index": index, "delta": {"content": content}, "finish_reason": None}]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, "usage": usage, **extra})


def answered(request: CovertRequest, *bodies: tuple[int, bytes], end: bool = True) -> Answer:
    answer = Answer(request.route.stream)
    for at, (kind, body) in enumerate(bodies):
        answer.take(frames.Frame(kind, 1, at, body), float(at))
    if end:
        assert answer.take(frames.Frame(frames.END, 1, len(bodies), b""), 99.0)
    return answer


def test_an_honest_non_stream_answer_passes_credited_its_tokens() -> None:
    request = covert()
    answer = Answer(False)
    assert answer.take(frames.Frame(frames.COMPLETION, 1, 0, completion()), 3.0)
    assert check_answer(request, answer) == (None, 5, 3.0)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (completion(object="chat.completion.chunk"), "not a chat.completion"),
        (completion(choices=[]), "exactly one choice"),
        (completion(content=""), "no text"),
        (completion(usage=None), "no usage"),
        (completion(completion=-3), "not two counts"),
        (completion(completion=True), "not two counts"),
        (completion(completion=16_000), "16000 completion tokens for 16 bytes of text, at most 16 asked"),
        (completion(content="ok", completion=9), "9 completion tokens for 2 bytes"),
        (completion(prompt=10_000), "10000 prompt tokens"),
    ],
)
def test_a_malformed_or_inflated_non_stream_answer_fails(body: bytes, problem: str) -> None:
    answer = Answer(False)
    answer.take(frames.Frame(frames.COMPLETION, 1, 0, body), 0.0)
    found = check_answer(covert(), answer).problem
    assert found is not None
    assert problem in found


def test_the_completion_bound_is_the_drawn_max_tokens() -> None:
    text = "The sea covers most of the planet and holds most of its water; it moves with the moon."
    body = completion(content=text, completion=40)
    for max_tokens, passes in ((16, False), (256, True)):
        answer = Answer(False)
        answer.take(frames.Frame(frames.COMPLETION, 1, 0, body), 0.0)
        assert (check_answer(covert(max_tokens=max_tokens), answer).problem is None) is passes


def test_a_stream_is_assembled_from_its_chunks_in_order_with_its_usage() -> None:
    request = covert(stream=True, include_usage=True)
    usage = {"prompt_tokens": 14, "completion_tokens": 4}
    answer = answered(
        request,
        (frames.CHUNK, chunk("")),  # a bare role: no content yet
        (frames.KEEPALIVE, b""),
        (frames.CHUNK, chunk("The sea ") + b"\n" + chunk("is ")),
        (frames.CHUNK, chunk("wide.")),
        (frames.CHUNK, chunk(usage=usage)),
    )
    assert check_answer(request, answer) == (None, 4, 2.0)  # first content: the third frame
    # Frames taken out of order are read in their sequence order.
    shuffled = Answer(True)
    for seq, body in ((2, chunk("wide.")), (0, chunk("The sea ")), (1, chunk("is ")), (3, chunk(usage=usage))):
        shuffled.take(frames.Frame(frames.CHUNK, 1, seq, body), 0.0)
    shuffled.take(frames.Frame(frames.END, 1, 4, b""), 0.0)
    assert check_answer(request, shuffled).problem is None
    lying = answered(
        request, (frames.CHUNK, chunk("ok")), (frames.CHUNK, chunk(usage={**usage, "completion_tokens": 9}))
    )
    assert "usage claims 9 completion tokens for 2 bytes" in str(check_answer(request, lying).problem)


@pytest.mark.parametrize(
    ("bodies", "problem"),
    [
        ([chunk("")], "no text"),
        ([chunk("hi")], "no usage"),  # it was asked for
        ([b"{oops"], "not JSON"),
        ([chunk("hi", object="chat.completion")], "not a chat.completion.chunk"),
        ([chunk("hi"), chunk("there", index=1)], "exactly one choice"),
        ([orjson.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": 3}}]})],
         "not text"),
    ],
)  # fmt: skip
def test_a_malformed_stream_fails(bodies: list[bytes], problem: str) -> None:
    request = covert(stream=True, include_usage=True)
    found = check_answer(request, answered(request, *((frames.CHUNK, b) for b in bodies))).problem
    assert found is not None
    assert problem in found


def test_a_stream_not_asked_for_usage_is_held_to_the_hosters_report() -> None:
    request = covert(stream=True)
    answer = answered(request, (frames.CHUNK, chunk("The sea is wide.")))
    honest = Usage(prompt_tokens=14, completion_tokens=5, total_tokens=19)
    assert check_answer(request, answer, honest) == (None, 5, 0.0)
    inflated = Usage(prompt_tokens=14, completion_tokens=900, total_tokens=914)
    assert str(check_answer(request, answer, inflated).problem).startswith("usage reported claims 900")
    assert check_answer(request, answer) == (None, 0, 0.0)  # no report: the text passes, no tokens credited


def test_frames_of_the_other_mode_or_past_the_limit_end_the_answer_as_malformed() -> None:
    stream = Answer(True)
    assert stream.take(frames.Frame(frames.COMPLETION, 1, 0, completion()), 0.0)
    assert "whole completion came for a stream" in str(check_answer(covert(stream=True), stream).problem)
    plain = Answer(False)
    assert plain.take(frames.Frame(frames.CHUNK, 1, 0, chunk("hi")), 0.0)
    assert "chunks came for a non-stream" in str(check_answer(covert(), plain).problem)
    small = Answer(True, limit_bytes=300)
    assert not small.take(frames.Frame(frames.CHUNK, 1, 0, chunk("x" * 20)), 0.0)
    assert small.take(frames.Frame(frames.CHUNK, 1, 1, chunk("x" * 100)), 0.0)
    assert "larger than 300 bytes" in str(check_answer(covert(stream=True), small).problem)
    failed = Answer(True)
    assert failed.take(frames.Frame(frames.ERROR, 1, 0, b"{}"), 0.0)
    assert failed.failed
