"""Every model the network ever served, kept in a JetStream key-value bucket so a restart remembers it."""

from __future__ import annotations

import asyncio
import base64
import logging

import orjson
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from libs.contracts import subjects


def _key(model: str) -> str:
    # Model names carry characters (":", "/") a KV key may not; base64url keeps them apart and reversible.
    return base64.urlsafe_b64encode(model.encode()).decode().rstrip("=")


class ModelsSeenStore:
    """Write-behind store of first-seen times; reads happen once, at start."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._kv: KeyValue | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def open(self, kv: KeyValue) -> dict[str, int]:
        """Take the bucket and return what it holds: model -> first seen (unix seconds)."""
        self._kv = kv
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        seen: dict[str, int] = {}
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                record = orjson.loads(entry.value)
                seen[record["model"]] = int(record["first_seen"])
        return seen

    def remember(self, model: str, first_seen: int) -> None:
        """Persist a newly seen model in the background (replicas writing the same key agree)."""
        task = asyncio.create_task(self._put(model, first_seen))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, model: str, first_seen: int) -> None:
        assert self._kv is not None
        try:
            await self._kv.put(_key(model), orjson.dumps({"model": model, "first_seen": first_seen}))
        except Exception as exc:  # the in-memory registry still knows the model
            self._log.warning("model not persisted", extra={"model": model, "error": repr(exc)})

    async def close(self) -> None:
        """Wait for pending writes."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)


BUCKET = subjects.MODELS_SEEN_BUCKET
