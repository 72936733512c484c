"""How billing consumes its durable usage events: acked after the work commits, retried with a growing delay
when it fails, and set aside in the dead-letter stream once it has failed ``max_deliver`` times, or at once
when it cannot even be read, so one bad event never blocks or loops a consumer forever."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from libs.contracts import subjects

# Headers a dead letter carries besides the event itself.
ORIGINAL_SUBJECT = "Computeshare-Subject"
ORIGINAL_SEQ = "Computeshare-Stream-Seq"
FAILURE = "Computeshare-Error"
DELIVERIES = "Computeshare-Deliveries"
FAILED_AT = "Computeshare-Failed-At"


@dataclass(frozen=True, slots=True)
class Redelivery:
    """When a failed event is tried again: ``backoff_s`` after the first failure, doubling up to
    ``backoff_max_s``; never after its ``max_deliver``-th delivery."""

    max_deliver: int
    backoff_s: float
    backoff_max_s: float = 60.0

    def delay(self, delivered: int, unreadable: bool) -> float | None:
        """Seconds until delivery ``delivered + 1``, or ``None``: dead-letter it now."""
        if unreadable or delivered >= self.max_deliver:
            return None
        return float(min(self.backoff_max_s, self.backoff_s * 2.0 ** max(0, delivered - 1)))


async def consume(
    raw: Msg,
    work: Callable[[bytes], Awaitable[None]],
    policy: Redelivery,
    js: JetStreamContext,
    consumer: str,
    logger: logging.Logger,
) -> None:
    """Run ``work`` on the event; ack it once done, else redeliver it later or dead-letter it."""
    try:
        await work(raw.data)
    except Exception as exc:
        metadata = raw.metadata
        delay = policy.delay(metadata.num_delivered, isinstance(exc, ValueError))
        if delay is not None:
            logger.warning(
                "usage event failed, retried later",
                extra={
                    "consumer": consumer,
                    "deliveries": metadata.num_delivered,
                    "delay_s": delay,
                    "error": repr(exc),
                },
            )
            await raw.nak(delay=delay)
            return
        logger.error(
            "usage event dead-lettered",
            extra={"consumer": consumer, "deliveries": metadata.num_delivered, "error": repr(exc)},
        )
        headers = {
            ORIGINAL_SUBJECT: raw.subject,
            ORIGINAL_SEQ: str(metadata.sequence.stream),
            FAILURE: repr(exc)[:1000],
            DELIVERIES: str(metadata.num_delivered),
            FAILED_AT: f"{time.time():.3f}",
            "Nats-Msg-Id": f"dead:{consumer}:{metadata.sequence.stream}",
        }
        await js.publish(subjects.deadletter(consumer), raw.data, headers=headers)
    await raw.ack()


class Batches:
    """Usage events written together: events that arrive while a batch is being written (at most
    ``max_batch``) go in the next one, a single round trip, and each is acked once its batch commits. When a
    batch fails, each of its events goes its own way through ``consume`` (retried alone, or dead-lettered
    alone), so one bad event never holds the others."""

    def __init__(
        self,
        write: Callable[[list[Msg]], Awaitable[None]],
        fallback: Callable[[Msg], Awaitable[None]],
        max_batch: int = 256,
    ) -> None:
        self._write = write
        self._fallback = fallback
        self._max = max_batch
        self._waiting: list[tuple[Msg, asyncio.Future[bool]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, raw: Msg) -> None:
        """Write ``raw``'s event with others; ack it, or hand it to the fallback if its batch failed."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((raw, done))
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._drain())
        if await done:
            await raw.ack()
        else:
            await self._fallback(raw)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                try:
                    await self._write([raw for raw, _ in batch])
                    ok = True
                except Exception:
                    ok = False
                for _, done in batch:
                    if not done.done():
                        done.set_result(ok)
        finally:
            self._writing = None
