"""``make bench`` ends with a verdict per target, from the figures it measured."""

from __future__ import annotations

from tests.bench import Result, verdicts


def test_each_target_is_judged_on_its_own_figure() -> None:
    direct = Result([0.0005] * 10, 1.0, 0)
    gateway = Result([0.001] * 10, 0.01, 0, cpu_s=0.03)  # 1,000 req/s, 3 ms of CPU each
    names = ["non-stream, concurrency 1", "non-stream, concurrency 16", "stream first token, concurrency 1"]
    lines = verdicts([(name, direct, gateway) for name in names], (999, 600.0, 12.0), 1000)
    assert lines == [
        "met      added latency at concurrency 1, p50: 0.50 ms (target <= 1.5 ms)",
        "met      throughput at concurrency 16: 1000.00 req/s (target >= 850 req/s)",
        "met      added to the first token at concurrency 1, p50: 0.50 ms (target <= 2 ms)",
        "NOT met  stack CPU per request at concurrency 16: 3.00 ms (target <= 2 ms)",
        "NOT met  1000 open streams: peak RSS: 600.00 MB (target <= 500 MB)",
        "NOT met  1000 open streams: completed: 999 (target >= 1000)",
    ]
