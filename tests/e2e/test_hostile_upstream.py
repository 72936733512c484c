"""One adapter fronting hostile and hung hosters next to a healthy one: the hostile attempts fail cleanly and
quickly, the adapter's memory stays bounded, and the healthy hoster keeps serving meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from libs.devstack.processes import free_port
from libs.devstack.stack import AdapterSpec, SimulatorSpec, Stack, throwaway_config
from services.simulator.app import AFTER_DONE
from tests.e2e.records import routing_record

pytestmark = pytest.mark.e2e

HEALTHY, HANG, LINES, HUGE, CHOICES, STALL, REFUSE, AFTER = (
    f"bbbbbbbb-0000-4000-8000-00000000000{i}" for i in range(8)
)
# The adapter's limits in this stack: small, so that the tests are quick.
FIRST_BYTE_S = STALL_S = 2.0
MB = 1 << 20
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def hoster(hoster_id: str, sim: SimulatorSpec, *models: tuple[str, str]) -> dict[str, Any]:
    return {
        "id": hoster_id,
        "name": hoster_id[-1],
        "base_url": sim.base_url,
        "capacity": 64,
        "models": [
            {"name": name, "upstream_model": "demo-model", "input_price": price, "output_price": price}
            for name, price in models
        ],
    }


@pytest.fixture(scope="module")
def hostile() -> Iterator[Stack]:
    healthy = SimulatorSpec("sim-healthy", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "8"})
    # Clean by default: each request names the fault it wants in its "simulator" field.
    evil = SimulatorSpec("sim-hostile", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "8"})
    hang = SimulatorSpec("sim-hang", free_port(), {"CS_SIMULATOR_FAULT": "hang", "CS_SIMULATOR_FAULT_RATE": "1"})
    hosters = [
        hoster(HEALTHY, healthy, ("demo-model", "1.00"), ("deadline", "1.00")),
        hoster(HANG, hang, ("deadline", "0.01")),
        hoster(LINES, evil, ("hostile-lines", "1.00")),
        hoster(HUGE, evil, ("hostile-error", "1.00")),
        hoster(CHOICES, evil, ("hostile-choices", "1.00")),
        hoster(STALL, evil, ("hostile-stall", "1.00")),
        hoster(REFUSE, evil, ("hostile-refuse", "1.00")),
        hoster(AFTER, evil, ("hostile-after-done", "1.00")),
    ]
    env = {
        "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5",
        "CS_ADAPTER_FIRST_BYTE_TIMEOUT_S": str(FIRST_BYTE_S),
        "CS_ADAPTER_STALL_TIMEOUT_S": str(STALL_S),
    }
    config = throwaway_config(
        simulators=[healthy, evil, hang],
        adapters=[AdapterSpec("hoster_adapter", hosters, env)],
        service_env={"CS_ROUTER_HOSTER_TTL_S": "2", "CS_INGRESS_IDLE_TIMEOUT_S": "10"},
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(hostile: Stack) -> str:
    return hostile.create_account(credits="1000")[1]


def memory_kb(pid: int, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (the peak) of a process, in kB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 8, **fields}


async def keep_calling_the_healthy_hoster(client: httpx.AsyncClient, stop: asyncio.Event) -> list[int]:
    statuses: list[int] = []
    while not stop.is_set():
        statuses.append((await client.post("/chat/completions", json=body("demo-model"))).status_code)
    return statuses


async def open_streams(client: httpx.AsyncClient, sim: SimulatorSpec, timeout_s: float = 2) -> int:
    """The simulator's open streams, once they are none or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = (await client.get(sim.base_url.removesuffix("/v1") + "/stats")).json()
        if stats["active_streams"] == 0 or time.monotonic() > deadline:
            return int(stats["active_streams"])
        await asyncio.sleep(0.05)


HOSTILE_CASES = [
    # An SSE line that never ends, sent for ever.
    ("hostile-lines", True, {"fault": "endless_line"}, "line_too_long"),
    # A 100 MB error body.
    ("hostile-error", False, {"fault": "huge_error", "fault_bytes": 100 * MB}, "upstream status 500: {"),
    # A thousand choices for a request that asked for one.
    ("hostile-choices", False, {"fault": "many_choices", "fault_choices": 1000}, "too_many_choices"),
]


async def test_hostile_upstreams_fail_cleanly_in_bounded_memory_while_a_healthy_one_serves(
    hostile: Stack, key: str
) -> None:
    pid = hostile.processes["hoster_adapter"].pid
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=hostile.config.api_base, headers=headers, timeout=60) as client:
        # Warm up, so that the baseline includes what a first request allocates once.
        assert (await client.post("/chat/completions", json=body("demo-model"))).status_code == 200
        baseline, peak = memory_kb(pid, "VmRSS"), memory_kb(pid, "VmHWM")
        highest = baseline
        for model, stream, fault, error in HOSTILE_CASES:
            stop = asyncio.Event()
            healthy = asyncio.create_task(keep_calling_the_healthy_hoster(client, stop))
            started = time.monotonic()
            attack = asyncio.create_task(
                client.post("/chat/completions", json=body(model, stream=stream, simulator=fault))
            )
            while not attack.done():
                highest = max(highest, memory_kb(pid, "VmRSS"))
                await asyncio.sleep(0.01)
            response = attack.result()
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.3)  # healthy requests go on after the attack too
            stop.set()
            statuses = await healthy
            assert response.status_code == 500, response.text
            assert response.json()["error"]["code"] == "all_hosters_failed"
            assert elapsed < 10, (model, elapsed)
            assert statuses, model
            assert set(statuses) == {200}, (model, statuses)
            record = await asyncio.to_thread(routing_record, hostile, key, response.headers["x-request-id"])
            [attempt] = record["attempts"]
            assert attempt["outcome"] == "failed"
            assert attempt["error"].startswith(error), attempt["error"]
            assert len(attempt["error"]) < 400
            # The adapter closed the upstream request: the endless line is not still being sent.
            assert await open_streams(client, hostile.config.simulators[1]) == 0
            print(f"{model}: failed in {elapsed:.2f}s, {len(statuses)} healthy requests meanwhile")
        grown_mb = (max(highest, memory_kb(pid, "VmHWM")) - max(baseline, peak)) / 1024
        print(f"adapter RSS: baseline {baseline / 1024:.1f} MB, highest {highest / 1024:.1f} MB, "
              f"peak growth {grown_mb:.1f} MB")  # fmt: skip
        assert highest - baseline < 100 * 1024
        assert grown_mb < 100
        assert hostile.processes["hoster_adapter"].alive()


@pytest.fixture
def sdk(hostile: Stack, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=hostile.config.api_base, api_key=key, max_retries=0, timeout=60) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True])
def test_a_hoster_that_never_answers_is_abandoned_at_the_first_byte_deadline_and_another_serves(
    hostile: Stack, key: str, sdk: openai.OpenAI, stream: bool
) -> None:
    started = time.monotonic()
    create = sdk.chat.completions.with_raw_response.create
    options: dict[str, Any] = {"extra_body": {"tier": "cheapest"}}
    if stream:
        raw_stream = create(model="deadline", messages=MESSAGES, max_tokens=8, stream=True, **options)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw_stream.parse() if chunk.choices)
        headers = raw_stream.headers
    else:
        raw = create(model="deadline", messages=MESSAGES, max_tokens=8, **options)
        text = raw.parse().choices[0].message.content or ""
        headers = raw.headers
    elapsed = time.monotonic() - started
    assert text
    assert headers["x-computeshare-hoster"] == HEALTHY
    assert headers["x-computeshare-attempts"] == "2"
    assert FIRST_BYTE_S <= elapsed < FIRST_BYTE_S + 5
    first, second = routing_record(hostile, key, headers["x-request-id"])["attempts"]
    assert (first["hoster_id"], first["outcome"]) == (HANG, "failed")
    assert first["error"].startswith("first_byte_timeout")
    assert second["outcome"] == "succeeded"


def test_a_stream_that_stalls_midway_ends_with_an_error_the_sdk_raises_within_the_stall_limit(
    hostile: Stack, key: str, sdk: openai.OpenAI
) -> None:
    stall = {"simulator": {"fault": "stall", "fault_after_tokens": 3, "reply_tokens": 8}}
    stream = sdk.chat.completions.create(
        model="hostile-stall", messages=MESSAGES, max_tokens=8, stream=True, extra_body=stall
    )
    received: list[float] = []

    def read_all() -> None:
        for _ in stream:
            received.append(time.monotonic())

    with pytest.raises(openai.APIError) as info:
        read_all()
    silence = time.monotonic() - received[-1]
    assert received
    assert STALL_S - 0.2 <= silence < STALL_S + 3, silence
    assert "middle of the response" in info.value.message
    [attempt] = routing_record(hostile, key, stream.response.headers["x-request-id"])["attempts"]
    assert attempt["outcome"] == "failed"
    assert attempt["error"].startswith("stalled")


def test_an_upstream_400_reaches_the_client_as_a_400_and_does_not_cool_the_hoster(sdk: openai.OpenAI) -> None:
    client = sdk
    refuse = {"simulator": {"fault": "error", "fault_status": 400}}
    for _ in range(4):  # three failures in a row would cool a hoster down
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="hostile-refuse", messages=MESSAGES, extra_body=refuse)
        assert info.value.status_code == 400
        assert info.value.response.headers["x-computeshare-attempts"] == "1"
        error = info.value.body
        assert isinstance(error, dict)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "rejected_by_hoster"
        assert "The simulator failed this request" in error["message"]
    answer = client.chat.completions.create(
        model="hostile-refuse", messages=MESSAGES, extra_body={"allow_hosters": [REFUSE]}
    )
    assert answer.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstreams_answer_ends_at_its_first_done_whatever_it_sends_after(
    hostile: Stack, key: str, stream: bool
) -> None:
    """The upstream sends its whole stream, then content after ``[DONE]`` (in the same write and a later one,
    with ``[DONE]`` again) and then hangs with the connection open. The attempt is over at the first
    ``[DONE]``: the client gets the answer without what came after, as soon as it is whole (not when the
    adapter's stall limit ends a read that should not have gone on), and the upstream connection is closed."""
    headers = {"authorization": f"Bearer {key}"}
    fault = {"simulator": {"fault": "after_done"}}
    async with httpx.AsyncClient(base_url=hostile.config.api_base, headers=headers, timeout=60) as client:
        response = await client.post("/chat/completions", json=body("hostile-after-done", stream=stream, **fault))
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-hoster"] == AFTER
        if stream:
            events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
            assert events[-1] == "[DONE]"
            assert events.count("[DONE]") == 1
            chunks = [orjson.loads(event) for event in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text
        assert AFTER_DONE not in text
        [attempt] = (await asyncio.to_thread(routing_record, hostile, key, response.headers["x-request-id"]))[
            "attempts"
        ]
        assert attempt["outcome"] == "succeeded"
        # The attempt ended at [DONE], not when the stall limit ran out on the silence after it.
        assert attempt["duration_ms"] < STALL_S * 1000, attempt
        # The adapter closed the upstream request: the hostile upstream is not still holding it open.
        assert await open_streams(client, hostile.config.simulators[1]) == 0
