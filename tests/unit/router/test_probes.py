"""What a probe's answer must be, and who gets probed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.router.probes import PROBE_PROMPT, check_answer, probe_due
from services.router.stats import HosterStats
from tests.unit.router.test_marketplace import WALL

PROMPT_BYTES = len(PROBE_PROMPT.encode())


def answer(content: Any = "The sea is wide.", prompt: Any = 14, completion: Any = 5, **extra: Any) -> bytes:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}], **extra}  # fmt: skip
    return orjson.dumps(body)


def test_an_honest_answer_passes() -> None:
    assert check_answer(answer(), PROMPT_BYTES) is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (answer(object="chat.completion.chunk"), "not a chat.completion"),
        (answer(choices=[]), "exactly one choice"),
        (answer(content=""), "no text"),
        (answer(usage=None), "no usage"),
        (answer(completion=-3), "not two counts"),
        (answer(completion=16_000), "16000 completion tokens for 16 bytes"),
        (answer(content="ok", completion=9), "9 completion tokens for 2 bytes"),
        (answer(prompt=10_000), "10000 prompt tokens"),
    ],
)
def test_a_malformed_or_inflated_answer_fails(body: bytes, problem: str) -> None:
    found = check_answer(body, PROMPT_BYTES)
    assert found is not None
    assert problem in found


def test_new_and_idle_hosters_are_probed_cooling_ones_are_not() -> None:
    stats = HosterStats(first_seen=WALL)
    assert probe_due(stats, WALL, new_attempts=20, idle_s=600)
    stats.lifetime, stats.last_attempt = 20, WALL
    assert not probe_due(stats, WALL + 10, new_attempts=20, idle_s=600)
    assert probe_due(stats, WALL + 601, new_attempts=20, idle_s=600)
    stats.cool_down(WALL + 601)
    assert not probe_due(stats, WALL + 602, new_attempts=20, idle_s=600)
