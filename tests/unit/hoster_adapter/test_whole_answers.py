"""An upstream's whole (unstreamed) answer read as a one-chunk stream: the same tally and assemblers hold it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from libs.contracts.common import CHAT, COMPLETIONS, Endpoint
from libs.contracts.routing import AttemptDispatch
from services.hoster_adapter.service import (
    CompletionAssembler,
    StreamTally,
    TextAssembler,
    UpstreamFailure,
    answer_as_chunk,
)


def dispatch(endpoint: Endpoint = CHAT) -> AttemptDispatch:
    return AttemptDispatch(
        request_id="chatcmpl-gw", attempt=1, router_id="r", reply_subject="ingress.reply.i.chatcmpl-gw",
        hoster_id="h", model="public-name", upstream_model="tiny", stream=False, include_usage=False, created=1234,
        input_price=1,
        output_price=2, body={"messages": [{"role": "user", "content": "weather?"}]}, max_tokens=64,
        endpoint=endpoint,
    )  # fmt: skip


CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "model": "tiny",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It is sunny.",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                    {"id": "b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38},
}


def test_a_whole_chat_answer_assembles_as_itself_with_the_engines_usage() -> None:
    chunk = answer_as_chunk(CHAT_ANSWER)
    tally, assembler = StreamTally(), CompletionAssembler(1)
    tally.observe(chunk)
    assembler.add(chunk)
    usage = tally.usage({})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (31, 7, False)
    body = orjson.loads(assembler.completion(dispatch(), usage, None, tally.reported_usage))
    message = body["choices"][0]["message"]
    assert message["content"] == "It is sunny."
    # Two calls stay two (a whole message numbers none of them; a stream's chunks would).
    assert [call["function"]["name"] for call in message["tool_calls"]] == ["weather", "time"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (31, 7)


def test_a_whole_text_completion_assembles_as_itself() -> None:
    answer = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": " over the hill", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    chunk = answer_as_chunk(answer)
    tally, assembler = StreamTally(), TextAssembler(1)
    tally.observe(chunk)
    assembler.add(chunk)
    body = orjson.loads(assembler.completion(dispatch(COMPLETIONS), tally.usage({}), None, tally.reported_usage))
    assert body["choices"][0]["text"] == " over the hill"
    assert body["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    "answer",
    [[], {"choices": "x"}, {"choices": [1]}, {"choices": [{"message": "hi"}]},
     {"choices": [{"message": {"tool_calls": ["x"]}}]}],
    ids=["not-an-object", "choices-not-a-list", "choice-not-an-object", "message-not-an-object", "bad-tool-calls"],
)  # fmt: skip
def test_a_malformed_whole_answer_is_the_upstreams_failure(answer: Any) -> None:
    with pytest.raises(UpstreamFailure, match="invalid_answer"):
        answer_as_chunk(answer)
