"""The error catalogue keeps OpenAI's pairing of status and type, and every "come back later" says when."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from libs.contracts import errors
from libs.contracts.common import ErrorReport

SAMPLES: dict[str, Any] = {"message": "m", "reasons": ["r"], "path": "/v1/embeddings", "param": "response_id"}


def catalogue() -> list[tuple[str, ErrorReport]]:
    reports = []
    for name, function in inspect.getmembers(errors, inspect.isfunction):
        if name.startswith("_") or function.__module__ != errors.__name__:
            continue
        arguments = {
            parameter: SAMPLES.get(parameter, 7)
            for parameter in inspect.signature(function).parameters
            if parameter not in ("code",)
        }
        reports.append((name, function(**arguments)))
    return reports


@pytest.mark.parametrize(("name", "report"), catalogue())
def test_status_type_and_retry_after_agree(name: str, report: ErrorReport) -> None:
    expected_type = {402: "insufficient_quota", 429: "rate_limit_error"}.get(
        report.http_status, "server_error" if report.http_status >= 500 else "invalid_request_error"
    )
    assert report.type == expected_type, name
    assert report.code, name
    if report.http_status in (429, 503):
        assert report.retry_after is not None and report.retry_after >= 1, name  # noqa: PT018


def test_no_service_builds_an_error_report_of_its_own() -> None:
    root = Path(__file__).resolve().parents[3]
    builders = [
        str(path.relative_to(root))
        for folder in ("services", "libs")
        for path in (root / folder).rglob("*.py")
        if "ErrorReport(" in path.read_text() and path.name not in ("errors.py", "common.py")
    ]
    assert builders == []
