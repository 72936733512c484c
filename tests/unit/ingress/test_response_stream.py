"""A chat completion stream as Responses stream events (``services.ingress.response_stream``): the events and
their order, each valid against OpenAI's published event schema and read by OpenAI's SDK, the SSE bytes read by
the SDK's own stream parser, and the final Response the same as a whole answer's."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from libs.contracts import errors
from libs.contracts.responses import ResponsesRequest
from services.ingress.response_object import response_of
from services.ingress.response_stream import ResponseStream, sse
from services.ingress.responses import chat_request_of
from tests.openai_schema import openai_validator

# The schema component of each event type the stream sends.
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.refusal.delta": "ResponseRefusalDeltaEvent",
    "response.refusal.done": "ResponseRefusalDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}
SDK_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
USAGE = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16, "cost": 0.00002}


def request(**body: Any) -> ResponsesRequest:
    return chat_request_of({"model": "m", "input": "hi", "stream": True} | body).request


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m-served",
        "choices": [choice],
    }
    return doc | extra


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return chunk() | {"choices": [], "usage": usage}


def call(
    index: int, call_id: str | None = None, name: str | None = None, arguments: str | None = None
) -> dict[str, Any]:
    function = {key: value for key, value in (("name", name), ("arguments", arguments)) if value is not None}
    piece: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        piece |= {"id": call_id, "type": "function"}
    return {"tool_calls": [piece]}


def checked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events``, each valid against its schema component and read by the SDK as its own type."""
    for event in events:
        openai_validator(EVENT_SCHEMAS[event["type"]]).validate(event)
        assert SDK_EVENT.validate_python(event).type == event["type"]
    return events


def run(
    chunks: list[dict[str, Any]], req: ResponsesRequest | None = None
) -> tuple[ResponseStream, list[dict[str, Any]]]:
    stream = ResponseStream(req or request(), "resp_1", 100)
    events = stream.start()
    for piece in chunks:
        events += stream.chunk(piece)
    events += stream.finish(completed_at=104)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return stream, checked(events)


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    usage_chunk(),
]

# Reasoning, text, two parallel calls: what a tool-calling open model streams.
TOOL_CHUNKS = [
    chunk({"role": "assistant"}),
    chunk({"reasoning_content": "Weather "}),
    chunk({"reasoning_content": "wanted."}),
    chunk({"content": "Checking."}),
    chunk(call(0, "call_a", "get_weather", "")),
    chunk(call(0, arguments='{"city":')),
    chunk(call(0, arguments='"Paris"}')),
    chunk(call(1, "call_b", "get_weather", '{"city":"Rome"}')),
    chunk({}, "tool_calls"),
    usage_chunk(),
]
TOOL_ANSWER = {
    "model": "m-served",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "reasoning_content": "Weather wanted.",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
}


def test_a_text_answer_streams_as_openai_orders_its_events() -> None:
    stream, events = run(TEXT_CHUNKS)

    assert kinds(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Hel", "lo"]
    created = events[0]["response"]
    assert (created["status"], created["output"], created["id"]) == ("in_progress", [], "resp_1")
    assert "usage" not in created
    added = events[2]["item"]
    assert (added["type"], added["status"], added["content"]) == ("message", "in_progress", [])
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["completed_at"] == 104
    assert final["model"] == "m-served"
    assert final["output"] == [events[8]["item"]]
    assert final["output"][0]["content"] == [
        {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
    ]
    assert final["usage"]["input_tokens"] == 9
    assert final["usage"]["cost"] == 0.00002
    assert stream.response == final


def test_reasoning_text_and_parallel_calls_are_items_in_order() -> None:
    _, events = run(TOOL_CHUNKS, request(tools=[WEATHER_TOOL]))

    assert kinds(events)[2:] == [
        "response.output_item.added",  # reasoning
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # call_a
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",  # call_b
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call", "function_call"]
    reasoning, _, first, second = final["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Weather wanted."}]
    assert (first["call_id"], first["name"], first["arguments"]) == ("call_a", "get_weather", '{"city":"Paris"}')
    assert (second["call_id"], second["arguments"]) == ("call_b", '{"city":"Rome"}')
    # Every event of an item names it by the id and the output index it was added with.
    added = {e["item"]["id"]: e["output_index"] for e in events if e["type"] == "response.output_item.added"}
    assert list(added.values()) == [0, 1, 2, 3]
    for event in events:
        if "item_id" in event:
            assert added[event["item_id"]] == event["output_index"]


def test_the_deltas_add_up_to_the_done_texts_and_the_final_items() -> None:
    _, events = run(
        [
            *TOOL_CHUNKS[:3],
            chunk({"content": "A"}),
            chunk({"refusal": "No"}),
            chunk({"refusal": "pe"}),
            *TOOL_CHUNKS[4:],
        ]
    )
    deltas: dict[tuple[str, int], str] = defaultdict(str)
    done: dict[tuple[str, int], str] = {}
    for event in events:
        key = (event.get("item_id", ""), event.get("content_index", -1))
        if event["type"].endswith(".delta"):
            deltas[key] += event["delta"]
        elif event["type"] in ("response.output_text.done", "response.reasoning_text.done"):
            done[key] = event["text"]
        elif event["type"] == "response.refusal.done":
            done[key] = event["refusal"]
        elif event["type"] == "response.function_call_arguments.done":
            done[key] = event["arguments"]
    assert deltas == done
    final = {item["id"]: item for item in events[-1]["response"]["output"]}
    for (item_id, content_index), text in done.items():
        item = final[item_id]
        if item["type"] == "function_call":
            assert item["arguments"] == text
        else:
            part = item["content"][content_index]
            assert part.get("text", part.get("refusal")) == text
    message = next(item for item in final.values() if item["type"] == "message")
    assert message["content"] == [
        {"type": "output_text", "text": "A", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "Nope"},
    ]


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    return response | {"output": [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]}


def test_the_final_response_is_the_whole_answers() -> None:
    req = request(tools=[WEATHER_TOOL])
    _, events = run(TOOL_CHUNKS, req)

    whole = response_of(TOOL_ANSWER, req, "resp_1", 100, completed_at=104)
    assert without_ids(events[-1]["response"]) == without_ids(whole)


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_a_cut_stream_ends_incomplete(finish: str, reason: str) -> None:
    _, events = run(
        [chunk({"reasoning_content": "hmm"}), chunk({"content": "Once upon"}), chunk({}, finish), usage_chunk()]
    )

    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": reason}
    assert [item["status"] for item in final["response"]["output"]] == ["completed", "incomplete"]
    assert next(e for e in events if e["type"] == "response.output_item.done")["item"]["status"] == "completed"


def test_a_call_cut_by_the_limit_is_the_incomplete_item() -> None:
    _, events = run([chunk(call(0, "c", "get_weather", '{"ci')), chunk({}, "length")], request(tools=[WEATHER_TOOL]))

    [call_item] = events[-1]["response"]["output"]
    assert (call_item["arguments"], call_item["status"]) == ('{"ci', "incomplete")


def test_a_name_in_pieces_is_whole_when_the_call_is_added() -> None:
    _, events = run(
        [
            chunk(call(0, "c", "get_")),
            chunk(call(0, name="weather")),
            chunk(call(0, arguments="{}")),
            chunk({}, "tool_calls"),
        ]
    )

    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["name"] == "get_weather"
    assert added["item"]["arguments"] == ""


def test_a_call_without_arguments_or_id_is_still_an_item() -> None:
    _, events = run([chunk({"tool_calls": [{"function": {"name": "get_time"}}]}), chunk({}, "tool_calls")])

    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert (done["name"], done["arguments"]) == ("get_time", "")
    [item] = events[-1]["response"]["output"]
    assert item["call_id"].startswith("call_")


def test_interleaved_calls_keep_their_own_arguments() -> None:
    _, events = run(
        [
            chunk(call(0, "a", "f", '{"x":')),
            chunk(call(1, "b", "g", '{"y":')),
            chunk(call(0, arguments="1}")),
            chunk(call(1, arguments="2}")),
            chunk({}, "tool_calls"),
        ]
    )

    output = events[-1]["response"]["output"]
    assert [(item["name"], item["arguments"]) for item in output] == [("f", '{"x":1}'), ("g", '{"y":2}')]


def test_text_after_calls_is_a_new_message() -> None:
    _, events = run(
        [chunk({"content": "a"}), chunk(call(0, "c", "f", "{}")), chunk({"content": "b"}), chunk({}, "stop")]
    )

    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "message"]
    assert output[2]["content"][0]["text"] == "b"


def test_logprobs_asked_for_come_with_each_delta_and_the_text() -> None:
    entry = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}
    pieces = [chunk({"content": "Hi"}) for _ in range(2)]
    for piece in pieces:
        piece["choices"][0]["logprobs"] = {"content": [entry]}
    req = request(include=["message.output_text.logprobs"], top_logprobs=0)
    _, events = run([*pieces, chunk({}, "stop")], req)

    expected = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}
    assert [e["logprobs"] for e in events if e["type"] == "response.output_text.delta"] == [[expected], [expected]]
    assert next(e for e in events if e["type"] == "response.output_text.done")["logprobs"] == [expected, expected]
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == [expected, expected]
    _, unasked = run(pieces)
    assert all(e["logprobs"] == [] for e in unasked if e["type"] == "response.output_text.delta")


def test_a_failure_before_any_output_is_response_failed() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.start() + stream.chunk(chunk({"role": "assistant"}))
    events += stream.fail(errors.all_hosters_failed())

    checked(events)
    assert kinds(events) == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": errors.all_hosters_failed().message}
    assert stream.finish() == []
    assert stream.chunk(chunk({"content": "late"})) == []


def test_a_rate_limit_before_any_output_says_so() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.fail(errors.rate_limited("Too many tokens per minute.", 3))

    checked(events)
    assert kinds(events) == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"


def test_a_failure_after_output_is_an_error_event_and_the_response_keeps_the_text() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.chunk(chunk({"content": "Half an ans"}))
    events += stream.fail(errors.upstream_broke_off())

    checked(events)
    assert events[-1] == {
        "type": "error",
        "code": "upstream_error",
        "message": "The hoster failed in the middle of the response.",
        "param": None,
        "sequence_number": len(events) - 1,
    }
    response = stream.response
    openai_validator("Response").validate(response)
    assert response["status"] == "failed"
    assert response["output"][0]["status"] == "incomplete"
    assert response["output"][0]["content"][0]["text"] == "Half an ans"
    assert stream.fail(errors.upstream_broke_off()) == []


def test_start_is_once_and_the_other_calls_start_the_stream() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.chunk(chunk({"content": "x"}))

    assert kinds(events)[:2] == ["response.created", "response.in_progress"]
    assert stream.start() == []
    assert kinds(ResponseStream(request(), "resp_2", 100).finish()) == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]


def test_only_the_first_choice_counts_and_nothing_after_it_finished() -> None:
    other = chunk({"content": "other choice"})
    other["choices"][0]["index"] = 1
    _, events = run(
        [chunk({"content": "a"}), other, chunk({}, "stop"), chunk({"content": "after the end"}), usage_chunk()]
    )

    [message] = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "a"
    assert events[-1]["response"]["usage"]["output_tokens"] == 7  # the usage chunk after the finish still counts


@pytest.mark.parametrize(
    "piece",
    [
        {"choices": "x"},
        {"choices": [None, 3]},
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5, "reasoning_content": ["a"], "refusal": {}}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": "f"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [None, {"index": "0", "function": "f"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"name": 3, "arguments": 4}}]}}]},
        {"usage": "lots", "model": 5},
        {"usage": {"prompt_tokens": -1, "completion_tokens": 2**70}},
    ],
)
def test_a_malformed_chunk_never_breaks_the_stream(piece: dict[str, Any]) -> None:
    _, events = run([chunk({"content": "ok"}), piece, chunk({}, "stop")])

    assert events[-1]["type"] == "response.completed"


def test_sse_frames_each_event_as_openai_sends_it() -> None:
    events = [{"type": "response.output_text.delta", "delta": "a\nb\r", "sequence_number": 3}]

    framed = sse(events)

    head = b"event: response.output_text.delta\n"
    assert framed == head + b'data: {"type":"response.output_text.delta","delta":"a\\nb\\r","sequence_number":3}\n\n'
    assert sse([]) == b""


def sdk(events: list[dict[str, Any]]) -> openai.OpenAI:
    """OpenAI's SDK reading ``events`` as the gateway's SSE body."""
    body = sse(events)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="x", base_url="http://gateway/v1", http_client=http, max_retries=0)


def test_the_sdks_stream_reads_every_event() -> None:
    _, events = run(TOOL_CHUNKS, request(tools=[WEATHER_TOOL]))

    with sdk(events).responses.create(model="m", input="hi", stream=True) as stream:
        read = list(stream)
    assert [event.type for event in read] == kinds(events)
    assert [event.sequence_number for event in read] == list(range(len(events)))


def test_the_sdks_stream_helper_assembles_the_final_response() -> None:
    _, events = run(TOOL_CHUNKS, request(tools=[WEATHER_TOOL]))

    with sdk(events).responses.stream(model="m", input="hi") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["Checking."]
    assert final.output_text == "Checking."
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 7)
    # What the SDK assembled is what the final event said, but for the parsing it adds.
    assembled = final.model_dump(exclude_unset=True, exclude={"output": {"__all__": {"parsed_arguments"}}})
    for item in assembled["output"]:
        for part in item.get("content") or ():
            part.pop("parsed", None)
    assert assembled == Response.model_validate(events[-1]["response"]).model_dump(exclude_unset=True)


def test_the_sdk_reads_a_text_stream_to_its_text() -> None:
    _, events = run(TEXT_CHUNKS)

    with sdk(events).responses.stream(model="m", input="hi") as stream:
        assert stream.get_final_response().output_text == "Hello"


def test_the_sdk_sees_an_incomplete_stream_end_incomplete() -> None:
    _, events = run([chunk({"content": "Once"}), chunk({}, "length")])

    with sdk(events).responses.stream(model="m", input="hi") as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "Once"


def test_the_sdk_reads_a_midstream_failure_as_an_error_event() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.chunk(chunk({"content": "Half"})) + stream.fail(errors.upstream_broke_off())

    with sdk(events).responses.stream(model="m", input="hi") as sdk_stream:
        last = list(sdk_stream)[-1]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            sdk_stream.get_final_response()
    assert last.type == "error"
    assert (last.code, last.message) == ("upstream_error", "The hoster failed in the middle of the response.")


def test_the_sdk_reads_a_failed_response() -> None:
    stream = ResponseStream(request(), "resp_1", 100)
    events = stream.fail(errors.all_hosters_failed())

    with sdk(events).responses.create(model="m", input="hi", stream=True) as sdk_stream:
        last = list(sdk_stream)[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error is not None
    assert last.response.error.code == "server_error"


def test_each_event_is_one_json_line() -> None:
    _, events = run(TOOL_CHUNKS)

    frames = sse(events).split(b"\n\n")
    assert frames[-1] == b""
    for frame, event in zip(frames[:-1], events, strict=True):
        head, data = frame.split(b"\n")
        assert head == b"event: " + event["type"].encode()
        assert orjson.loads(data.removeprefix(b"data: ")) == event
