"""``make bench``: the simulated hoster called directly vs through the gateway, side by side, in one run.

Everything runs on this machine: the stack, the simulator and this load generator share its cores, so the
numbers are the gateway's cost on top of a hoster that answers instantly (time to first token 0). For the
gateway it also reports the CPU each request costs, summed over every process of the stack (services,
nats-server, PostgreSQL; not the simulator nor this load generator), and, last, holds 1,000 slow streams open
at once and reports how many completed and the resident memory of the services and nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, SimulatorSpec, Stack, demo_hoster, throwaway_config
from libs.devstack.tinymodel import CORPUS, tiny_model
from libs.tokens import ModelTokenizer, TokenizerFiles, count_chat_prompt, count_completion, load_model_tokenizer

BODY = {
    "model": DEMO_MODEL,
    "messages": [{"role": "user", "content": "Benchmark me, briefly."}],
    "max_tokens": 16,
}
# The same simulated model under a name registered with a tokenizer (the tiny test model's): its usage is
# counted by the network, so the 1,000-token scenarios show what counting costs.
COUNTED_MODEL = "demo-counted"
LONG_PROMPT_TOKENS = 1000


def long_prompt(tokenizer: ModelTokenizer) -> str:
    """Text of the shipped corpus whose chat prompt counts at least ``LONG_PROMPT_TOKENS``."""
    lines = CORPUS.read_text().splitlines()
    text = ""
    for line in lines * 10:
        text += line + "\n"
        if count_chat_prompt(tokenizer, {"messages": [{"role": "user", "content": text}]}) >= LONG_PROMPT_TOKENS:
            return text
    raise RuntimeError("the corpus is too short for the long prompt")


def counting_cpu_ms(tokenizer: ModelTokenizer, body: dict[str, Any], reply: str, rounds: int = 200) -> float:
    """CPU milliseconds one request's counting costs in-process: its prompt (chat template rendered and
    encoded) and its completion."""
    started = time.process_time()
    for _ in range(rounds):
        count_chat_prompt(tokenizer, body)
        count_completion(tokenizer, [reply])
    return (time.process_time() - started) * 1000 / rounds


@dataclass
class Result:
    """Latencies (seconds) of one scenario and its wall time; through the gateway also the CPU seconds each
    stack process used and the NATS messages published (``in_msgs``) and delivered (``out_msgs``)."""

    latencies: list[float]
    wall_s: float
    errors: int
    cpu_by_process: dict[str, float] | None = None
    nats_in: int | None = None
    nats_out: int | None = None

    @property
    def cpu_s(self) -> float | None:
        """The whole stack's CPU seconds."""
        return None if self.cpu_by_process is None else sum(self.cpu_by_process.values())

    def per_request(self, amount: float) -> float:
        """``amount`` shared over the completed requests."""
        return amount / len(self.latencies) if self.latencies else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return len(self.latencies) / self.wall_s

    @property
    def cpu_ms(self) -> float | None:
        """The stack's CPU per completed request, in milliseconds."""
        return None if self.cpu_s is None or not self.latencies else self.cpu_s / len(self.latencies) * 1000


def stack_processes(stack: Stack, postgres: bool = True) -> dict[str, list[int]]:
    """Every process of the stack but the simulators, by name, with their descendants: services,
    nats-server and (``postgres``) PostgreSQL's postmaster and backends."""
    roots = {
        name: p._proc.pid
        for name, p in stack.processes.items()
        if p._proc is not None and "simulator" not in name and (postgres or name != "postgres")
    }
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[str, list[int]] = {}
    for name, root in roots.items():
        pids = {root}
        grew = True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in pids} - pids
            pids |= more
            grew = bool(more)
        found[name] = sorted(pids)
    return found


def stack_pids(stack: Stack, postgres: bool = True) -> list[int]:
    """Every pid of ``stack_processes``."""
    return sorted(pid for pids in stack_processes(stack, postgres).values() for pid in pids)


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU the processes used so far (those alive now)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_by_process(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each named process (with its descendants)."""
    return {name: cpu_seconds(pids) for name, pids in processes.items()}


def nats_counts(monitor_port: int) -> tuple[int, int]:
    """The NATS server's messages in (published by clients) and out (delivered to subscribers) so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as response:
        varz = orjson.loads(response.read())
    return int(varz["in_msgs"]), int(varz["out_msgs"])


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the processes, in MB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


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


def non_stream(
    client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any] = BODY
) -> Callable[[], Awaitable[float]]:
    """One non-streaming completion; returns its latency."""
    payload = orjson.dumps(body)
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


async def measure(
    direct: str,
    gateway: str,
    key: str,
    duration_s: float,
    processes: dict[str, list[int]],
    monitor_port: int,
    prompt: str,
) -> list[tuple[str, Result, Result]]:
    """Every scenario against both targets, alternating so both see the same machine state."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    rows = []
    long = BODY | {"messages": [{"role": "user", "content": prompt}]}
    uncounted = partial(non_stream, body=long)

    def counted(client: httpx.AsyncClient, url: str, key: str) -> Callable[[], Awaitable[float]]:
        # The simulator knows the model by its upstream name only.
        return non_stream(client, url, key, body=long if url == direct else long | {"model": COUNTED_MODEL})

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        scenarios: list[tuple[str, Callable[[httpx.AsyncClient, str, str], Callable[[], Awaitable[float]]], int]] = [
            ("non-stream, concurrency 1", non_stream, 1),
            ("non-stream, concurrency 16", non_stream, 16),
            ("stream first token, concurrency 1", first_token, 1),
            ("stream first token, concurrency 16", first_token, 16),
            ("1k prompt, not counted, conc. 1", uncounted, 1),
            ("1k prompt, counted, conc. 1", counted, 1),
            ("1k prompt, not counted, conc. 16", uncounted, 16),
            ("1k prompt, counted, conc. 16", counted, 16),
        ]
        for name, factory, concurrency in scenarios:
            d = await run_load(factory(client, direct, key), concurrency, duration_s, warmup=50)
            before = cpu_by_process(processes)
            in_before, out_before = nats_counts(monitor_port)
            g = await run_load(factory(client, gateway, key), concurrency, duration_s, warmup=50)
            # The warmup's CPU and messages count too: a little more per request, never less.
            after = cpu_by_process(processes)
            in_after, out_after = nats_counts(monitor_port)
            g.cpu_by_process = {name: after[name] - before[name] for name in after}
            g.nats_in, g.nats_out = in_after - in_before, out_after - out_before
            rows.append((name, d, g))
    return rows


async def open_streams(gateway: str, key: str, count: int, pids: list[int]) -> tuple[int, float, float]:
    """``count`` streams at once against a slow hoster (20 tokens at 2 a second: about 10 s each): how many
    completed, the stack's peak resident memory (services and nats-server) while they were open, and the
    wall time."""
    body = BODY | {"stream": True, "max_tokens": 20, "simulator": {"reply_tokens": 20, "tokens_per_second": 2}}
    payload = orjson.dumps(body)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    peak = 0.0
    limits = httpx.Limits(max_connections=count + 16, max_keepalive_connections=count + 16)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one() -> bool:
            async with client.stream("POST", gateway, content=payload, headers=headers) as response:
                if response.status_code != 200:
                    return False
                lines = [line async for line in response.aiter_lines() if line]
            return lines[-1] == "data: [DONE]" and not any(line.startswith('data: {"error"') for line in lines)

        started = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while not all(task.done() for task in tasks):
            peak = max(peak, rss_mb(pids))
            await asyncio.sleep(0.5)
        done = sum(1 for task in tasks if not task.exception() and task.result())
    return done, peak, time.perf_counter() - started


def report(rows: list[tuple[str, Result, Result]]) -> str:
    """The side-by-side table."""
    lines = [
        f"{'scenario':<36}{'target':<9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}{'CPU ms/req':>12}"
        f"{'NATS in':>8}{'out':>8}",
        "-" * 108,
    ]
    for name, direct, gateway in rows:
        for label, r in (("direct", direct), ("gateway", gateway)):
            cpu = f"{r.cpu_ms:>12.2f}" if r.cpu_ms is not None else ""
            if r.nats_in is not None and r.nats_out is not None:
                cpu += f"{r.per_request(r.nats_in):>8.1f}{r.per_request(r.nats_out):>8.1f}"
            lines.append(f"{name:<36}{label:<9}{r.pct(0.5):>9.2f}{r.pct(0.99):>9.2f}{r.rps:>9.0f}{r.errors:>8}{cpu}")
        lines.append(
            f"{'':<36}{'added':<9}{gateway.pct(0.5) - direct.pct(0.5):>9.2f}"
            f"{gateway.pct(0.99) - direct.pct(0.99):>9.2f}"
        )
    return "\n".join(lines)


# Python services run on one core each: a replica is planned at 70% of it, leaving room for bursts.
REPLICA_BUSY = 0.7


def process_table(result: Result) -> str:
    """CPU milliseconds per request of each stack process, dearest first."""
    assert result.cpu_by_process is not None
    lines = [f"{'process':<20}{'CPU ms/req':>12}{'share':>8}"]
    total = sum(result.cpu_by_process.values()) or 1.0
    for name, seconds in sorted(result.cpu_by_process.items(), key=lambda item: -item[1]):
        lines.append(f"{name:<20}{result.per_request(seconds) * 1000:>12.2f}{seconds / total:>8.0%}")
    return "\n".join(lines)


def capacity_table(result: Result, rates: tuple[int, ...] = (1_000, 10_000)) -> str:
    """Replicas (one core each, planned at ``REPLICA_BUSY``) each Python service needs at ``rates`` req/s,
    from the CPU per request measured; nats-server and PostgreSQL use several cores and are given in cores."""
    assert result.cpu_by_process is not None
    header = "".join(f"{f'{rate:,} req/s':>16}" for rate in rates)
    lines = [f"{'process':<20}{'CPU ms/req':>12}{header}"]
    for name, seconds in sorted(result.cpu_by_process.items()):
        ms = result.per_request(seconds) * 1000
        cells = ""
        for rate in rates:
            cores = rate * ms / 1000
            if name in ("nats", "postgres"):
                cells += f"{f'{cores:.1f} cores':>16}"
            else:
                cells += f"{f'{max(1, math.ceil(cores / REPLICA_BUSY))} replicas':>16}"
        lines.append(f"{name:<20}{ms:>12.2f}{cells}")
    return "\n".join(lines)


def main() -> None:
    """Start a stack, measure, print the table, stop the stack."""
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario and target")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open at once (0: skip)")
    args = parser.parse_args()
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "16"})
    monitor_port = free_port()
    hoster = demo_hoster(simulator.base_url, capacity=args.streams + 64)
    hoster["models"].append(hoster["models"][0] | {"name": COUNTED_MODEL, "upstream_model": DEMO_MODEL})
    config = throwaway_config(
        nats_monitor_port=monitor_port,
        simulators=[simulator],
        adapters=[AdapterSpec("hoster_adapter", [hoster], {"CS_ADAPTER_MAX_CONNECTIONS": str(args.streams + 64)})],
        # The simulator counts its tokens its own way, far from the registered tokenizer's: a discrepancy on
        # every counted request, which must not cool the bench's only hoster down.
        service_env={"CS_ROUTER_DISCREPANCIES_TO_COOL": "0"},
    )
    tiny = tiny_model(0)
    tokenizer = load_model_tokenizer(TokenizerFiles(tiny.tokenizer_json.read_bytes(),
                                                    tiny.tokenizer_config.read_bytes()))  # fmt: skip
    prompt = long_prompt(tokenizer)
    stack = Stack(config).start()
    try:
        stack.computeshare("model", "register", COUNTED_MODEL, "--tokenizer", str(tiny.tokenizer_json),
                           "--tokenizer-config", str(tiny.tokenizer_config))  # fmt: skip
        direct = f"{simulator.base_url}/chat/completions"
        _, key = stack.create_account(credits="1000000", name="bench")
        gateway = f"{config.api_base}/chat/completions"
        rows = uvloop.run(measure(direct, gateway, key, args.duration, stack_processes(stack), monitor_port, prompt))
        streams = None
        if args.streams:
            streams = uvloop.run(open_streams(gateway, key, args.streams, stack_pids(stack, postgres=False)))
    finally:
        stack.stop()
    print(report(rows))
    busiest = rows[1][2]
    print(f"\nCPU per request by process, {rows[1][0]}:\n{process_table(busiest)}")
    print(f"\nCapacity plan from those figures:\n{capacity_table(busiest)}")
    if streams is not None:
        done, peak, wall = streams
        print(f"\n{args.streams} streams open at once (about 10 s each): {done} completed in {wall:.1f} s; "
              f"services and nats-server peak RSS {peak:.0f} MB (target <= 500 MB)")  # fmt: skip
    c1 = rows[0]
    added = c1[2].pct(0.5) - c1[1].pct(0.5)
    through = statistics.median(c1[2].latencies) * 1000
    print(f"\ngateway adds {added:.2f} ms at p50, concurrency 1 (target <= 1.5 ms); {through:.2f} ms in all")
    by_name = {name: gateway for name, _, gateway in rows}
    plain_1, counted_1 = by_name["1k prompt, not counted, conc. 1"], by_name["1k prompt, counted, conc. 1"]
    plain_16, counted_16 = by_name["1k prompt, not counted, conc. 16"], by_name["1k prompt, counted, conc. 16"]
    body = BODY | {"messages": [{"role": "user", "content": prompt}]}
    in_process = counting_cpu_ms(tokenizer, body, "word " * 16)
    print(f"\nCounting a {LONG_PROMPT_TOKENS}-token prompt and its reply: {in_process:.2f} ms CPU in one process;"
          f" the stack's CPU per request {(counted_16.cpu_ms or 0) - (plain_16.cpu_ms or 0):+.2f} ms counted vs"
          f" not (concurrency 16); on the client's path {counted_1.pct(0.5) - plain_1.pct(0.5):+.2f} ms at p50"
          f" (concurrency 1)")  # fmt: skip
    print("\n" + "\n".join(verdicts(rows, streams, args.streams)))


def verdicts(rows: list[tuple[str, Result, Result]], streams: tuple[int, float, float] | None, count: int) -> list[str]:
    """Each target of the benchmark, met or not, with the figure measured."""
    by_name = {name: (direct, gateway) for name, direct, gateway in rows}
    non_stream_1 = by_name["non-stream, concurrency 1"]
    non_stream_16 = by_name["non-stream, concurrency 16"]
    ttft_1 = by_name["stream first token, concurrency 1"]
    cpu = non_stream_16[1].cpu_ms or 0.0
    checks = [
        ("added latency at concurrency 1, p50", non_stream_1[1].pct(0.5) - non_stream_1[0].pct(0.5), 1.5, "ms", "<="),
        ("throughput at concurrency 16", non_stream_16[1].rps, 850.0, "req/s", ">="),
        ("added to the first token at concurrency 1, p50", ttft_1[1].pct(0.5) - ttft_1[0].pct(0.5), 2.0, "ms", "<="),
        ("stack CPU per request at concurrency 16", cpu, 2.0, "ms", "<="),
    ]
    if streams is not None:
        done, peak, _ = streams
        checks.append((f"{count} open streams: peak RSS", peak, 500.0, "MB", "<="))
        checks.append((f"{count} open streams: completed", float(done), float(count), "", ">="))
    lines = []
    for label, value, target, unit, sense in checks:
        met = value <= target if sense == "<=" else value >= target
        figure = f"{value:.2f} {unit}" if unit else f"{value:.0f}"
        wanted = f"{target:g} {unit}" if unit else f"{target:g}"
        lines.append(f"{'met    ' if met else 'NOT met'}  {label}: {figure} (target {sense} {wanted})")
    return lines


if __name__ == "__main__":
    main()
