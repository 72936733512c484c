"""Tokenizers a process keeps: loaded on first use, at most a few at once, fetched from billing's registry."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.contracts import subjects
from libs.contracts.models import FetchTokenizer, TokenizerPart, unpack_tokenizer_bundle
from libs.tokens.model import ModelTokenizer, TokenizerFiles, load_model_tokenizer, sha256_hex

# Loaded tokenizers one process keeps. Measured with ``python -m tests.tokens_memory`` (byte-level BPE trained
# here): each 128k-vocabulary tokenizer held adds 37-48 MB of resident memory (the first in a process ~97 MB,
# with the parse's transient memory the allocator keeps) and loads in 0.2-0.6 s; a 32k one 9-12 MB (first
# ~26 MB), 0.05-0.1 s. So 8 large ones are about 400 MB at most.
DEFAULT_CAPACITY = 8
# How long a process counts with a tokenizer before asking billing whether it is still the registered one (an
# ``unchanged`` answer carries no files); as long, it believes a model is not registered.
DEFAULT_REFRESH_S = 60.0
# How long a model whose tokenizer could not be fetched (billing unreachable) counts as not registered.
RETRY_AFTER_FAILURE_S = 5.0
# Models remembered as not registered, at most.
MAX_UNREGISTERED = 1024
# The largest bundle a process takes from billing (both files, compressed).
MAX_BUNDLE_BYTES = 64 * 1024 * 1024

# Sends ``data`` to ``subject`` and gives back the reply's payload (``nats_requester`` makes one).
Requester = Callable[[str, bytes, float], Awaitable[bytes]]


class TokenizerFetchError(RuntimeError):
    """billing's answer could not be made into the tokenizer it claimed (a bundle that does not match its
    SHA-256s, parts of another version, too large)."""


def nats_requester(connection: object) -> Requester:
    """A ``Requester`` over a nats-py ``Client``."""

    async def request(subject: str, data: bytes, timeout_s: float) -> bytes:
        reply = await connection.request(subject, data, timeout=timeout_s)  # type: ignore[attr-defined]
        payload: bytes = reply.data
        return payload

    return request


class TokenizerLru:
    """At most ``capacity`` loaded tokenizers by model; the least recently used is dropped past it."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a tokenizer cache holds at least one tokenizer")
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, model: str) -> _Entry | None:
        """The entry of ``model``, now the most recently used; ``None`` if not held."""
        entry = self._entries.get(model)
        if entry is not None:
            self._entries.move_to_end(model)
        return entry

    def put(self, model: str, entry: _Entry) -> None:
        """Hold ``entry`` for ``model``, dropping the least recently used past the capacity."""
        self._entries[model] = entry
        self._entries.move_to_end(model)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, model: str) -> None:
        """Forget ``model``."""
        self._entries.pop(model, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Entry:
    tokenizer: ModelTokenizer
    bundle_sha256: str
    checked_at: float


class RegisteredTokenizers:
    """The registered models' tokenizers as one process uses them: ``await get(model)`` asks billing
    (``billing.tokenizer.fetch``) the first time, loads the tokenizer and keeps it (``TokenizerLru``); later
    calls count with it locally, and every ``refresh_s`` one asks billing whether it is still current, which
    costs one small answer unless a new registration replaced it. The files cross NATS once per model and
    bundle (again only after the tokenizer was dropped from the cache). Concurrent calls for one model share
    one fetch."""

    def __init__(
        self,
        request: Requester,
        capacity: int = DEFAULT_CAPACITY,
        refresh_s: float = DEFAULT_REFRESH_S,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._request = request
        self._loaded = TokenizerLru(capacity)
        self._unregistered: OrderedDict[str, float] = OrderedDict()
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._fetching: dict[str, asyncio.Future[ModelTokenizer | None]] = {}
        # Bundles fetched from billing, for tests and metrics: one per model and bundle.
        self.fetches = 0

    async def get(self, model: str) -> ModelTokenizer | None:
        """``model``'s registered tokenizer, or ``None`` when it is not registered. Raises what the request
        raises (NATS' timeout, no responders: billing unreachable) and ``TokenizerFetchError``; a tokenizer
        already held is still answered while billing is unreachable."""
        now = self._clock()
        entry = self._loaded.get(model)
        if entry is not None and now - entry.checked_at < self._refresh_s:
            return entry.tokenizer
        seen = self._unregistered.get(model)
        if entry is None and seen is not None and now - seen < self._refresh_s:
            return None
        pending = self._fetching.get(model)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh_or_keep(model, entry))
            self._fetching[model] = pending
            pending.add_done_callback(lambda done: self._fetching.pop(model, None) if done is pending else None)
        return await asyncio.shield(pending)

    async def _refresh_or_keep(self, model: str, entry: _Entry | None) -> ModelTokenizer | None:
        try:
            return await self._refresh(model, entry)
        except TokenizerFetchError:
            raise
        except Exception:
            if entry is None:
                # billing unreachable and nothing held: the model counts as not registered for a few seconds,
                # so requests meanwhile are not each held up by a fetch that times out.
                self._unregistered[model] = self._clock() - self._refresh_s + RETRY_AFTER_FAILURE_S
                raise
            # billing unreachable: keep counting with the tokenizer held, and ask again after refresh_s.
            entry.checked_at = self._clock()
            return entry.tokenizer

    async def _ask(self, query: FetchTokenizer) -> TokenizerPart:
        data = await self._request(subjects.FETCH_TOKENIZER, query.model_dump_json().encode(), self._timeout_s)
        return TokenizerPart.model_validate_json(data)

    async def _refresh(self, model: str, entry: _Entry | None) -> ModelTokenizer | None:
        first = await self._ask(FetchTokenizer(model=model, known_bundle_sha256=entry and entry.bundle_sha256))
        now = self._clock()
        if first.status == "not_registered":
            self._loaded.drop(model)
            self._unregistered[model] = now
            self._unregistered.move_to_end(model)
            while len(self._unregistered) > MAX_UNREGISTERED:
                self._unregistered.popitem(last=False)
            return None
        self._unregistered.pop(model, None)
        if first.status == "unchanged" and entry is not None:
            entry.checked_at = now
            return entry.tokenizer
        if first.status != "registered":
            raise TokenizerFetchError(f"billing answered {first.status!r} for {model!r} and sent no tokenizer")
        files, bundle_sha256 = await self._bundle(model, first)
        self.fetches += 1
        tokenizer = await asyncio.to_thread(load_model_tokenizer, files)
        self._loaded.put(model, _Entry(tokenizer, bundle_sha256, self._clock()))
        return tokenizer

    async def _bundle(self, model: str, first: TokenizerPart) -> tuple[TokenizerFiles, str]:
        """Every part of the bundle ``first`` began, checked against the SHA-256s billing stated."""
        size, version = first.bundle_size, first.version
        if size > MAX_BUNDLE_BYTES or version is None or not first.bundle_sha256:
            raise TokenizerFetchError(f"billing's tokenizer bundle for {model!r} is unusable (size {size})")
        parts = [first.data]
        received = len(first.data)
        while received < size:
            part = await self._ask(FetchTokenizer(model=model, version=version, offset=received))
            if part.status != "registered" or part.version != version or part.offset != received or not part.data:
                raise TokenizerFetchError(f"billing's tokenizer bundle for {model!r} broke off at {received}")
            parts.append(part.data)
            received += len(part.data)
        bundle = b"".join(parts)
        if received != size or sha256_hex(bundle) != first.bundle_sha256:
            raise TokenizerFetchError(f"billing's tokenizer bundle for {model!r} does not match its SHA-256")
        try:
            tokenizer_json, config_json = unpack_tokenizer_bundle(bundle)
        except ValueError as exc:
            raise TokenizerFetchError(str(exc)) from None
        files = TokenizerFiles(tokenizer_json, config_json)
        if (files.tokenizer_sha256, files.config_sha256) != (first.tokenizer_sha256, first.config_sha256):
            raise TokenizerFetchError(f"billing's tokenizer files for {model!r} do not match their SHA-256s")
        return files, first.bundle_sha256
