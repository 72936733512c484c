"""An upstream refusing the client's own parameters is the client's fault: no failover, no cooldown, no trust
lost."""

from __future__ import annotations

from libs.contracts.common import Usage
from libs.contracts.pricing import UsageBounds
from libs.contracts.routing import AttemptFinished, RouteRequest, RoutingPreferences
from services.router.service import InFlight, Run, can_fail_over
from services.router.stats import NetworkStats
from tests.unit.router.test_marketplace import CHEAP, WALL, fail, hoster, order, registry


def refused(stats: NetworkStats, hoster_id: str, times: int) -> None:
    for _ in range(times):
        stats.observe(
            hoster_id, WALL, model="m", outcome="failed", chunks_sent=0, ttft_ms=None, completion_tokens=0,
            duration_ms=10, client_error=True,
        )  # fmt: skip


def test_client_errors_neither_cool_a_hoster_down_nor_lower_its_trust() -> None:
    stats = NetworkStats()
    refused(stats, CHEAP, 5)
    assert not stats.of(CHEAP, WALL).cooling(WALL)
    assert stats.of(CHEAP, WALL).trust(WALL) == NetworkStats().of(CHEAP, WALL).trust(WALL)
    assert [c.hoster.hoster_id for c in order(registry(hoster(CHEAP, 1)), RoutingPreferences(), stats)] == [CHEAP]
    fail(stats, CHEAP, 3)  # the hoster's own failures still count
    assert stats.of(CHEAP, WALL).cooling(WALL)


def finished(client_error: bool) -> AttemptFinished:
    return AttemptFinished(
        request_id="r", attempt=1, hoster_id=CHEAP, adapter_id="a", model="m", stream=False, outcome="failed",
        usage=Usage(), chunks_sent=0, input_price=1, output_price=1, error="upstream status 400: bad",
        upstream_status=400, client_error=client_error, duration_ms=1, finished_at=WALL,
    )  # fmt: skip


def test_a_client_error_is_not_retried_on_another_hoster() -> None:
    route = RouteRequest(
        request_id="r", reply_subject="x", model="m", stream=False, include_usage=False, created=0,
        routing=RoutingPreferences(), body={},
    )  # fmt: skip
    candidates = order(registry(hoster(CHEAP, 1)), RoutingPreferences(), NetworkStats())
    for client_error, retried in ((False, True), (True, False)):
        report = finished(client_error)
        run = Run(1, candidates[0], "a", "x.1.t", 0.0, None, report=report)
        run.end("failed", 1.0, report.error, report.client_error)
        flight = InFlight(route, list(candidates), 1, UsageBounds(100, 100), [run], 1)
        assert can_fail_over(flight) is retried
