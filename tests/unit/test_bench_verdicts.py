"""``make bench`` ends with a verdict per target, from the figures it measured."""

from __future__ import annotations

from tests.bench import Result, capacity_table, process_table, verdicts


def test_each_target_is_judged_on_its_own_figure() -> None:
    direct = Result([0.0005] * 10, 1.0, 0)
    gateway = Result(
        [0.001] * 10, 0.01, 0, cpu_by_process={"router": 0.02, "nats": 0.01}
    )  # 1,000 req/s, 3 ms of CPU each
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


def test_cpu_per_process_and_capacity_plan_come_from_the_measured_cpu() -> None:
    # 1,000 requests: the router used 1.5 ms each, the ingress 0.2 ms, nats-server 0.5 ms.
    result = Result([0.001] * 1000, 1.0, 0, cpu_by_process={"router": 1.5, "ingress": 0.2, "nats": 0.5})
    assert process_table(result).splitlines()[1:] == [
        "router                      1.50     68%",
        "nats                        0.50     23%",
        "ingress                     0.20      9%",
    ]
    plan = capacity_table(result).splitlines()
    # 1,000 req/s x 1.5 ms = 1.5 cores -> 3 replicas at 70%; 10,000 req/s -> 15 cores -> 22 replicas.
    assert plan[3].split() == ["router", "1.50", "3", "replicas", "22", "replicas"]
    assert plan[1].split() == ["ingress", "0.20", "1", "replicas", "3", "replicas"]
    assert plan[2].split() == ["nats", "0.50", "0.5", "cores", "5.0", "cores"]
