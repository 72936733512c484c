"""Every float in every contract is finite, and the ones a hoster sends are held to sane bounds: a NaN or an
infinity (which pydantic reads from JSON as ``NaN``, ``Infinity`` or ``1e400``) is refused as it is read."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import orjson
import pydantic
import pytest

import libs.contracts
from libs.contracts.common import Contract
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import AttemptFinished

REPORT: dict[str, Any] = {
    "request_id": "r", "attempt": 1, "router_id": "r", "hoster_id": "h", "adapter_id": "a", "model": "m",
    "stream": True, "outcome": "succeeded", "usage": {}, "chunks_sent": 3, "input_price": 1, "output_price": 1,
    "ttft_ms": 120.0, "duration_ms": 900.0, "finished_at": 1_700_000_000.0,
}  # fmt: skip
BEAT: dict[str, Any] = {
    "adapter_id": "a",
    "interval_s": 1.0,
    "hosters": [
        {"hoster_id": "h", "name": "n", "cloud": False, "capacity": 4, "in_flight": 0, "advertised_ttft_ms": 300.0,
         "models": [{"model": "m", "upstream_model": "m", "input_price": 1, "output_price": 2}]}
    ],
}  # fmt: skip


def test_every_contract_model_refuses_non_finite_floats() -> None:
    models = [
        cls
        for info in pkgutil.iter_modules(libs.contracts.__path__)
        for _, cls in inspect.getmembers(importlib.import_module(f"libs.contracts.{info.name}"), inspect.isclass)
        if issubclass(cls, pydantic.BaseModel) and cls.__module__.startswith("libs.contracts.")
    ]
    assert len(models) > 50
    assert [m.__name__ for m in models if not issubclass(m, Contract) or m.model_config.get("allow_inf_nan")] == []


@pytest.mark.parametrize("field", ["ttft_ms", "duration_ms", "finished_at"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_an_outcome_report_with_a_non_finite_time_is_refused(field: str, number: str) -> None:
    AttemptFinished.model_validate_json(orjson.dumps(REPORT))  # the report as sent is fine
    raw = orjson.dumps({**REPORT, field: 0.5}).replace(b"0.5", number.encode())
    with pytest.raises(pydantic.ValidationError, match=field):
        AttemptFinished.model_validate_json(raw)
    with pytest.raises(pydantic.ValidationError, match=field):
        AttemptFinished.model_validate({**REPORT, field: float(number)})


@pytest.mark.parametrize(
    ("field", "value"),
    [("ttft_ms", -1.0), ("duration_ms", -1.0), ("duration_ms", 1e12), ("ttft_ms", 1e12), ("finished_at", -5.0),
     ("finished_at", 1e13)],
)  # fmt: skip
def test_an_outcome_report_with_an_impossible_time_is_refused(field: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        AttemptFinished.model_validate({**REPORT, field: value})


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400", "0", "-1", "3601"])
def test_a_heartbeat_interval_must_be_a_sane_number(number: str) -> None:
    raw = orjson.dumps({**BEAT, "interval_s": 0.5}).replace(b"0.5", number.encode())
    with pytest.raises(pydantic.ValidationError, match="interval_s"):
        HosterHeartbeat.model_validate_json(raw)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-3", "1e12"])
def test_an_advertised_time_to_first_token_must_be_a_sane_number(number: str) -> None:
    raw = orjson.dumps(BEAT).replace(b"300.0", number.encode())
    with pytest.raises(pydantic.ValidationError, match="advertised_ttft_ms"):
        HosterHeartbeat.model_validate_json(raw)
