"""What the router keeps across restarts, in JetStream key-value buckets: every model the network ever
served, and the stats (trust included) of every hoster."""

from __future__ import annotations

import asyncio
import base64
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NoKeysError, ServiceUnavailableError
from nats.js.kv import KeyValue


def kv_key(name: str) -> str:
    """Model names and ids may hold characters (":", "/") a KV key may not; base64url keeps them apart."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


class KvStore:
    """Write-behind store over one bucket; it is read once, at start."""

    def __init__(self, bucket: str, logger: logging.Logger, replicas: int = 1) -> None:
        self.bucket = bucket
        self._replicas = replicas
        self._log = logger
        self._kv: KeyValue | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def open(self, js: JetStreamContext) -> list[bytes]:
        """Bind (or create) the bucket and return every value in it. A clustered JetStream can be without a
        leader for a few seconds (a node just died, or restarts with us): its timeouts are waited out."""
        for delay in (0.5, 1, 2, 4, 8, 15, 30, 0):
            try:
                return await self._open(js)
            except (NatsTimeout, ServiceUnavailableError) as exc:
                if not delay:
                    raise
                self._log.warning("bucket unavailable, retrying", extra={"bucket": self.bucket, "error": repr(exc)})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _open(self, js: JetStreamContext) -> list[bytes]:
        try:
            self._kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(bucket=self.bucket, history=1, replicas=self._replicas)
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        values = []
        for key in keys:
            entry = await self._kv.get(key)
            if entry.value:
                values.append(entry.value)
        return values

    def put(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name`` in the background (replicas writing the same key agree)."""
        task = asyncio.create_task(self._put(kv_key(name), value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, value: bytes) -> None:
        assert self._kv is not None
        try:
            await self._kv.put(key, value)
        except Exception as exc:  # the in-memory state still holds it; the next write retries
            self._log.warning("not persisted", extra={"bucket": self.bucket, "error": repr(exc)})

    async def close(self) -> None:
        """Wait for pending writes."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)
