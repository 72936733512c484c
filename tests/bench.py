"""``make bench``: the simulated hoster called directly vs through the gateway, side by side, in one run.

Everything runs on this machine: the stack, the simulator and this load generator share its cores, so the
numbers are the gateway's cost on top of a hoster that answers instantly (time to first token 0).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import orjson
import uvloop

from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, SimulatorSpec, Stack, demo_hoster, throwaway_config

BODY = {
    "model": DEMO_MODEL,
    "messages": [{"role": "user", "content": "Benchmark me, briefly."}],
    "max_tokens": 16,
}


@dataclass
class Result:
    """Latencies (seconds) of one scenario and its wall time."""

    latencies: list[float]
    wall_s: float
    errors: int

    def pct(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return len(self.latencies) / self.wall_s


async def run_load(call: Callable[[], Awaitable[float]], concurrency: int, duration_s: float, warmup: int) -> Result:
    """``concurrency`` workers calling back to back for ``duration_s`` after ``warmup`` calls each."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            try:
                latencies.append(await call())
            except (httpx.HTTPError, AssertionError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(latencies, time.perf_counter() - started, errors)


def non_stream(client: httpx.AsyncClient, url: str, key: str) -> Callable[[], Awaitable[float]]:
    """One non-streaming completion; returns its latency."""
    payload = orjson.dumps(BODY)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}

    async def call() -> float:
        started = time.perf_counter()
        response = await client.post(url, content=payload, headers=headers)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        return elapsed

    return call


def first_token(client: httpx.AsyncClient, url: str, key: str) -> Callable[[], Awaitable[float]]:
    """One streaming completion; returns the time to its first content chunk (and reads it to the end)."""
    payload = orjson.dumps(BODY | {"stream": True})
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}

    async def call() -> float:
        started = time.perf_counter()
        ttft = None
        async with client.stream("POST", url, content=payload, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if ttft is None and '"content":"' in line and '"content":""' not in line:
                    ttft = time.perf_counter() - started
        assert ttft is not None
        return ttft

    return call


async def measure(direct: str, gateway: str, key: str, duration_s: float) -> list[tuple[str, Result, Result]]:
    """Every scenario against both targets, alternating so both see the same machine state."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    rows = []
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        scenarios: list[tuple[str, Callable[[httpx.AsyncClient, str, str], Callable[[], Awaitable[float]]], int]] = [
            ("non-stream, concurrency 1", non_stream, 1),
            ("non-stream, concurrency 16", non_stream, 16),
            ("stream first token, concurrency 1", first_token, 1),
        ]
        for name, factory, concurrency in scenarios:
            d = await run_load(factory(client, direct, key), concurrency, duration_s, warmup=50)
            g = await run_load(factory(client, gateway, key), concurrency, duration_s, warmup=50)
            rows.append((name, d, g))
    return rows


def report(rows: list[tuple[str, Result, Result]]) -> str:
    """The side-by-side table."""
    lines = [
        f"{'scenario':<36}{'target':<9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}",
        "-" * 80,
    ]
    for name, direct, gateway in rows:
        for label, r in (("direct", direct), ("gateway", gateway)):
            lines.append(f"{name:<36}{label:<9}{r.pct(0.5):>9.2f}{r.pct(0.99):>9.2f}{r.rps:>9.0f}{r.errors:>8}")
        lines.append(
            f"{'':<36}{'added':<9}{gateway.pct(0.5) - direct.pct(0.5):>9.2f}"
            f"{gateway.pct(0.99) - direct.pct(0.99):>9.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Start a stack, measure, print the table, stop the stack."""
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario and target")
    args = parser.parse_args()
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "16"})
    config = throwaway_config(
        simulators=[simulator],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(simulator.base_url)])],
    )
    stack = Stack(config).start()
    try:
        direct = f"{simulator.base_url}/chat/completions"
        _, key = stack.create_account(credits="1000000", name="bench")
        rows = uvloop.run(measure(direct, f"{config.api_base}/chat/completions", key, args.duration))
    finally:
        stack.stop()
    print(report(rows))
    c1 = rows[0]
    added = c1[2].pct(0.5) - c1[1].pct(0.5)
    through = statistics.median(c1[2].latencies) * 1000
    print(f"\ngateway adds {added:.2f} ms at p50, concurrency 1 (target <= 1.5 ms); {through:.2f} ms in all")


if __name__ == "__main__":
    main()
