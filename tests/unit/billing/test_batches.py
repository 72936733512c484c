"""Usage events written together: one round trip for those that arrive meanwhile, each acked once its batch
commits; a failed batch sends each event its own way."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from services.billing.durable import Batches


class FakeMsg:
    """Only what ``Batches`` uses of a JetStream message: its data and its ack."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_events_arriving_while_a_batch_is_written_go_in_the_next_one_and_are_acked() -> None:
    written: list[list[bytes]] = []
    alone: list[bytes] = []

    async def write(messages: list[Msg]) -> None:
        written.append([m.data for m in messages])
        await asyncio.sleep(0.01)

    async def fallback(message: Msg) -> None:
        alone.append(message.data)

    batches = Batches(write, fallback, max_batch=4)
    messages = [FakeMsg(str(i).encode()) for i in range(10)]
    await asyncio.gather(*(batches.add(m) for m in messages))  # type: ignore[arg-type]
    assert [len(batch) for batch in written] == [4, 4, 2]
    assert sorted(b for batch in written for b in batch) == sorted(m.data for m in messages)
    assert all(m.acked for m in messages)
    assert alone == []


async def test_a_failed_batch_sends_each_event_its_own_way_unacked_here() -> None:
    alone: list[bytes] = []

    async def write(messages: list[Msg]) -> None:
        raise ValueError("one of them is bad")

    async def fallback(message: Msg) -> None:
        alone.append(message.data)

    batches = Batches(write, fallback)
    messages = [FakeMsg(b"a"), FakeMsg(b"b")]
    await asyncio.gather(*(batches.add(m) for m in messages))  # type: ignore[arg-type]
    assert sorted(alone) == [b"a", b"b"]
    assert not any(m.acked for m in messages)  # the fallback acks (or not) each one itself
