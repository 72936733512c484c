"""A hoster played by the test, not by our adapter: it holds a real hoster's credentials on a real nats-server,
heartbeats one model, and answers each attempt with whatever the test scripts, in whatever order, the way a
stranger's modified agent could."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import frames, subjects
from libs.contracts.common import Usage
from libs.contracts.hosters import HosterHeartbeat, HosterStatus, ModelOffer
from libs.contracts.routing import AttemptAccepted, AttemptDispatch, AttemptFinished, AttemptOutcome
from libs.platform.natsauth import AuthStore
from tests.conftest import NatsTestServer

Script = Callable[["ScriptedHoster", AttemptDispatch, Msg], Awaitable[None]]


class ScriptedHoster:
    """One hoster, connected with its own credentials; ``script`` decides what each attempt gets."""

    def __init__(self, nc: Client, hoster_id: str, model: str, script: Script, price: int) -> None:
        self.nc = nc
        self.price = price
        self.tasks: set[asyncio.Task[None]] = set()
        self.hoster_id = hoster_id
        self.model = model
        self.adapter_id = f"scripted-{hoster_id[:8]}"
        self.script = script
        self.attempts: list[AttemptDispatch] = []
        self._beating: asyncio.Task[None] | None = None

    @classmethod
    async def join(
        cls, nats_server: NatsTestServer, tmp_path: Path, model: str, script: Script, price: int = 1000
    ) -> ScriptedHoster:
        """Mint a hoster's credentials with the server's authority, connect with them and start heartbeating."""
        return await cls.connect(nats_server.url, nats_server.auth, tmp_path, model, script, price)

    @classmethod
    async def connect(
        cls, url: str, auth: AuthStore, tmp_path: Path, model: str, script: Script, price: int = 1000
    ) -> Self:
        hoster_id = str(uuid.uuid4())
        _, creds = auth.mint_hoster(hoster_id, f"scripted-{hoster_id[:4]}")
        path = auth.write_creds(tmp_path / f"{hoster_id}.creds", creds)
        nc = await nats.connect(url, user_credentials=str(path), inbox_prefix=subjects.hoster_inbox_prefix(hoster_id))
        hoster = cls(nc, hoster_id, model, script, price)
        start = subjects.attempt_start(hoster_id)
        await nc.subscribe(start, queue=subjects.QUEUE_HOSTER_ADAPTER, cb=hoster._on_attempt)
        hoster._beating = asyncio.create_task(hoster._beat())
        return hoster

    async def close(self) -> None:
        for task in (self._beating, *self.tasks):
            if task is not None:
                task.cancel()
        await self.nc.close()

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` (an attempt that outlives its callback) until the hoster closes."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def keep_alive(self, dispatch: AttemptDispatch, reply: str, every_s: float = 0.1) -> None:
        """Say the attempt is alive, for ever, and never answer."""
        while True:
            await self.nc.publish(reply, frames.encode(frames.KEEPALIVE, dispatch.attempt, -1))
            await asyncio.sleep(every_s)

    async def send_chunk(
        self,
        dispatch: AttemptDispatch,
        reply: str,
        seq: int,
        content: str = "Hi",
        finish_reason: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """One chat chunk frame on ``reply``, numbered ``seq`` of ``attempt`` (the dispatch's own by default:
        a hostile hoster may claim another)."""
        delta = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        chunk = {"id": dispatch.request_id, "object": "chat.completion.chunk", "created": dispatch.created,
                 "model": dispatch.model, "choices": [delta]}  # fmt: skip
        number = dispatch.attempt if attempt is None else attempt
        await self.nc.publish(reply, frames.encode(frames.CHUNK, number, seq, orjson.dumps(chunk)))

    def heartbeat(self) -> HosterHeartbeat:
        offer = ModelOffer(model=self.model, upstream_model=self.model, input_price=self.price, output_price=self.price)
        status = HosterStatus(
            hoster_id=self.hoster_id, name="scripted", cloud=False, capacity=8, in_flight=0, models=[offer]
        )
        return HosterHeartbeat(adapter_id=self.adapter_id, interval_s=0.3, hosters=[status])

    async def _beat(self) -> None:
        while True:
            beat = self.heartbeat().model_dump_json().encode()
            await self.nc.publish(subjects.hoster_heartbeat(self.hoster_id), beat)
            await asyncio.sleep(0.3)

    async def _on_attempt(self, msg: Msg) -> None:
        dispatch = AttemptDispatch.model_validate_json(msg.data)
        self.attempts.append(dispatch)
        await self.script(self, dispatch, msg)

    async def accept(self, dispatch: AttemptDispatch) -> None:
        answer = AttemptAccepted(
            request_id=dispatch.request_id, attempt=dispatch.attempt, accepted=True, adapter_id=self.adapter_id
        )
        await self.nc.publish(
            subjects.attempt_accepted(self.hoster_id, dispatch.router_id), answer.model_dump_json().encode()
        )

    async def decline(self, dispatch: AttemptDispatch) -> None:
        """Say no to the offer (as an agent at capacity does)."""
        answer = AttemptAccepted(
            request_id=dispatch.request_id, attempt=dispatch.attempt, accepted=False, adapter_id=self.adapter_id
        )
        await self.nc.publish(
            subjects.attempt_accepted(self.hoster_id, dispatch.router_id), answer.model_dump_json().encode()
        )

    async def answer(
        self, dispatch: AttemptDispatch, reply: str, content: str, usage: Usage, attempt: int | None = None
    ) -> None:
        """A whole chat completion (a non-stream answer) on ``reply``, claiming ``usage``."""
        completion = {
            "id": dispatch.request_id, "object": "chat.completion", "created": dispatch.created,
            "model": dispatch.model, "usage": usage.model_dump(exclude={"estimated"}),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }  # fmt: skip
        number = dispatch.attempt if attempt is None else attempt
        await self.nc.publish(reply, frames.encode(frames.COMPLETION, number, 0, orjson.dumps(completion)))

    async def report(
        self,
        dispatch: AttemptDispatch,
        outcome: AttemptOutcome,
        usage: Usage | None = None,
        chunks_sent: int = 0,
        **claims: object,
    ) -> None:
        """Report the attempt's outcome to the router that dispatched it, as the adapter does (core NATS)."""
        event = AttemptFinished(
            request_id=dispatch.request_id,
            attempt=dispatch.attempt,
            router_id=dispatch.router_id,
            hoster_id=self.hoster_id,
            adapter_id=self.adapter_id,
            model=dispatch.model,
            stream=dispatch.stream,
            outcome=outcome,
            usage=usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
            chunks_sent=chunks_sent,
            input_price=dispatch.input_price,
            output_price=dispatch.output_price,
            error="scripted" if outcome == "failed" else None,
            duration_ms=1.0,
            finished_at=time.time(),
        ).model_copy(update=claims)
        await self.nc.publish(
            subjects.attempt_finished(self.hoster_id, dispatch.router_id), event.model_dump_json().encode()
        )
