from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from libs.platform.logging import setup_logging
from libs.platform.telemetry import REQUEST_ID


def test_json_lines_carry_the_service_request_id_and_trace_id() -> None:
    logger = setup_logging("router", "INFO", "json")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    tracer = TracerProvider().get_tracer("test")
    token = REQUEST_ID.set("chatcmpl-abc")
    try:
        with tracer.start_as_current_span("work") as span:
            logger.warning("attempt failed", extra={"hoster_id": "h1"})
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        REQUEST_ID.reset(token)
    logger.info("outside any request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["service"] == "router"
    assert (first["level"], first["msg"], first["hoster_id"]) == ("warning", "attempt failed", "h1")
    assert first["request_id"] == "chatcmpl-abc"
    assert first["trace_id"] == trace_id
    assert "request_id" not in second
    assert "trace_id" not in second
