"""A heartbeat is a hoster's untrusted claim that every router holds (and whose model names it persists): its
lists and strings are bounded as it is read, and a heartbeat past a bound is refused whole."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from libs.contracts.hosters import (
    MAX_CAPABILITIES,
    MAX_HOSTERS_PER_HEARTBEAT,
    MAX_MODELS_PER_HOSTER,
    MAX_NAME_LENGTH,
    MAX_SUPPORTED_PARAMETERS,
    MAX_UPSTREAM_MODEL_LENGTH,
    HosterHeartbeat,
)


def offer(model: str = "org/model-7b:q4", **changes: Any) -> dict[str, Any]:
    return {"model": model, "upstream_model": model, "input_price": 1, "output_price": 2, **changes}


def status(**changes: Any) -> dict[str, Any]:
    return {"hoster_id": "h", "name": "box", "cloud": False, "capacity": 4, "in_flight": 0, "models": [offer()],
            **changes}  # fmt: skip


def beat(*statuses: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"adapter_id": "a", "interval_s": 1.0, "hosters": list(statuses) or [status()], **changes}


def test_a_heartbeat_at_every_bound_is_taken() -> None:
    heartbeat = HosterHeartbeat.model_validate(
        beat(
            *[status(hoster_id=f"h{i}") for i in range(MAX_HOSTERS_PER_HEARTBEAT - 1)],
            status(
                name="n" * MAX_NAME_LENGTH,
                region="r" * MAX_NAME_LENGTH,
                models=[
                    offer("m" * (MAX_NAME_LENGTH - 4) + f"{i:04}", upstream_model="u" * MAX_UPSTREAM_MODEL_LENGTH,
                          capabilities=[f"c{j}" for j in range(MAX_CAPABILITIES)])
                    for i in range(MAX_MODELS_PER_HOSTER)
                ],
                supported_parameters=[f"p{j}" for j in range(MAX_SUPPORTED_PARAMETERS)],
            ),
        )
    )  # fmt: skip
    assert len(heartbeat.hosters[-1].models) == MAX_MODELS_PER_HOSTER


@pytest.mark.parametrize(
    ("heartbeat", "field"),
    [
        (beat(*[status(hoster_id=f"h{i}") for i in range(MAX_HOSTERS_PER_HEARTBEAT + 1)]), "hosters"),
        (beat(status(models=[offer(f"m{i}") for i in range(MAX_MODELS_PER_HOSTER + 1)])), "models"),
        (beat(status(name="n" * (MAX_NAME_LENGTH + 1))), "name"),
        (beat(status(region="r" * (MAX_NAME_LENGTH + 1))), "region"),
        (beat(status(models=[offer("m" * (MAX_NAME_LENGTH + 1))])), "model"),
        (beat(status(models=[offer(upstream_model="u" * (MAX_UPSTREAM_MODEL_LENGTH + 1))])), "upstream_model"),
        (beat(status(models=[offer(capabilities=["c"] * (MAX_CAPABILITIES + 1))])), "capabilities"),
        (beat(status(models=[offer(endpoints=["chat.completions"] * 4)])), "endpoints"),
        (beat(status(supported_parameters=["p"] * (MAX_SUPPORTED_PARAMETERS + 1))), "supported_parameters"),
        (beat(status(supported_parameters=["p" * 65])), "supported_parameters"),
        (beat(adapter_id="a" * (MAX_NAME_LENGTH + 1)), "adapter_id"),
        (beat(status(hoster_id="h" * 65)), "hoster_id"),
        (beat(status(capacity=-1)), "capacity"),
        (beat(status(in_flight=2**40)), "in_flight"),
    ],
)
def test_a_heartbeat_past_a_bound_is_refused(heartbeat: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        HosterHeartbeat.model_validate(heartbeat)


@pytest.mark.parametrize("model", ["", " leading-space", "two words", "new\nline", "-dash-first", "emoji-🙂", "a\x00b"])
def test_a_model_id_must_look_like_one(model: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="model"):
        HosterHeartbeat.model_validate(beat(status(models=[offer(model)])))


@pytest.mark.parametrize(
    "model", ["demo-model", "llama3.2", "meta-llama/Llama-3.1-8B-Instruct", "qwen2.5:7b", "m@v2+x"]
)
def test_the_model_ids_in_use_are_taken(model: str) -> None:
    assert HosterHeartbeat.model_validate(beat(status(models=[offer(model)]))).hosters[0].models[0].model == model
