"""One trace per request across the four services, Prometheus metrics, and JSON log lines that carry the
request id and the trace id."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, SimulatorSpec, Stack, demo_hoster, throwaway_config

pytestmark = pytest.mark.e2e


class Collector:
    """A minimal OTLP/HTTP trace receiver: (service, trace id, span name) of every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                collector.spans.append((attributes["service.name"], span.trace_id.hex(), span.name))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def services_of(self, trace_id: str) -> set[str]:
        with self._lock:
            return {service for service, tid, _ in self.spans if tid == trace_id}

    def traces_of(self, service: str) -> list[str]:
        with self._lock:
            return [tid for s, tid, _ in self.spans if s == service]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture(scope="module")
def traced(collector: Collector) -> Iterator[Stack]:
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "6"})
    config = throwaway_config(
        simulators=[simulator],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(simulator.base_url)])],
        service_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


def test_one_trace_spans_ingress_router_billing_and_the_adapter(traced: Stack, collector: Collector) -> None:
    key = traced.create_account(credits="10")[1]
    sdk = openai.OpenAI(base_url=traced.config.api_base, api_key=key, max_retries=0)
    sdk.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "trace me"}])
    deadline = time.monotonic() + 15
    wanted = {"ingress", "router", "billing", "hoster_adapter"}
    # Each process exports its spans on its own schedule, and the adapter's upstream span ends after the
    # handler that accepted the attempt: wait for a trace holding all of them.
    while True:
        request_traces = set(collector.traces_of("ingress"))
        full = [t for t in request_traces if collector.services_of(t) >= wanted]
        names = {name for _, tid, name in collector.spans if full and tid == full[0]}
        if "upstream chat.completions" in names:  # the adapter's call to the hoster is in the same trace
            break
        assert time.monotonic() < deadline, ({t: collector.services_of(t) for t in request_traces}, names)
        time.sleep(0.2)


def test_every_service_serves_prometheus_metrics(traced: Stack) -> None:
    base = traced.config.api_base.removesuffix("/v1")
    # Not on the public API port: on the metrics port only.
    assert httpx.get(f"{base}/metrics").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{traced.metrics_ports['ingress']}/metrics").text
    assert 'computeshare_http_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "computeshare_http_request_duration_seconds_bucket" in text
    assert "computeshare_requests_in_flight" in text


def test_every_log_line_of_a_service_is_json_naming_the_service(traced: Stack) -> None:
    # request_id and trace_id on the lines are covered in tests/unit/platform/test_logging.py.
    key = traced.create_account(credits="1")[1]
    response = httpx.post(
        f"{traced.config.api_base}/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 404
    assert traced.config.log_dir is not None
    lines = [line.split("| ", 1)[1] for line in (traced.config.log_dir / "router.log").read_text().splitlines()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records
    assert all(r["service"] == "router" for r in records)
