"""The ingress's side of the bus: one reply subscription per process, demultiplexed per request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Literal, NamedTuple, TypeVar, cast

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, TypeAdapter, ValidationError

from libs.contracts import errors, frames, subjects
from libs.contracts.billing import (
    Caller,
    CreditsQuery,
    CreditsReport,
    GenerationQuery,
    GenerationRecord,
    KeyInfo,
    KeyQuery,
    KeyReport,
    UsageQuery,
    UsageReport,
    VerifyKey,
)
from libs.contracts.common import MAX_COUNT, ErrorReport
from libs.contracts.hosters import ModelsListing
from libs.contracts.management import KeyChanged
from libs.contracts.openai import embedding_vectors
from libs.contracts.pricing import UsageBounds, client_usage, detail_count, held_to_count
from libs.contracts.routing import (
    CancelReason,
    RequestCancelled,
    RequestDelivered,
    RouteAccepted,
    RouteDecision,
    RouteRejected,
    RouteRequest,
)
from libs.platform.ratelimit import FailureBudget
from libs.platform.telemetry import inject_headers
from libs.tokens import ChoiceText, ModelTokenizer, RegisteredTokenizers, nats_requester

_DECISION: TypeAdapter[RouteAccepted | RouteRejected] = TypeAdapter(RouteDecision)


# Bytes a request's envelope (ids, routing, caller) may add to the client's body on its way to the hoster.
ENVELOPE_ROOM = 64 * 1024
# The answer a management request expects.
Answer = TypeVar("Answer", bound=BaseModel)


class GatewayError(Exception):
    """The request cannot go on; ``report`` (with ``headers``) is what the client gets."""

    def __init__(self, report: ErrorReport, headers: dict[str, str] | None = None) -> None:
        super().__init__(report.message)
        self.report = report
        self.headers = headers or {}


class Deadlines:
    """The deadlines the ingress holds a hoster's attempt to, itself: a hoster's agent is not trusted to keep
    the ones it was given. ``overdue(request_id, attempt, reason)`` reports a miss to the router."""

    __slots__ = ("ceiling_s", "grace_s", "overdue", "stall_s")

    def __init__(
        self, ceiling_s: float, grace_s: float, stall_s: float, overdue: Callable[[str, int, CancelReason], None]
    ) -> None:
        self.ceiling_s = ceiling_s
        self.grace_s = grace_s
        self.stall_s = stall_s
        self.overdue = overdue


class VectorsAsked(NamedTuple):
    """What an embeddings request asked for: one vector per each of its ``inputs``, ``width`` numbers each (its
    ``dimensions``, when set), in its ``encoding_format``."""

    inputs: int
    width: int | None
    encoding: Literal["float", "base64"]


# OpenAI's ``n`` is at most 128.
MAX_CHOICES = 128


class UsageGuard:
    """Counts the text one attempt relays to the client, and holds the usage the client sees to the request's
    bounds (``UsageBounds``, and the relayed text), priced at the serving hoster's prices as billing prices
    it: a hoster's inflated or negative report never reaches the client. The usage is rewritten to
    ``client_usage`` of the bounded counts, so its details never exceed their counts, its cost is the
    gateway's, and nothing else a hoster put in it passes."""

    __slots__ = (
        "_counted",
        "bounds",
        "choices",
        "counter",
        "fee_bps",
        "input_price",
        "max_choices",
        "output_price",
        "progress",
        "prompt_count",
        "text",
        "text_bytes",
        "texts",
        "vectors",
    )

    def __init__(
        self,
        bounds: UsageBounds,
        input_price: int,
        output_price: int,
        fee_bps: int,
        vectors: VectorsAsked | None = None,
        text: bool = False,
        max_choices: int = MAX_CHOICES,
    ) -> None:
        # An embeddings request's: its answer must hold the vectors it asked for.
        self.vectors = vectors
        # A text completion's: its choices carry ``text`` (a chat answer's carry deltas or messages, and a
        # ``text`` a hoster added to one must not count as text the client received).
        self.text = text
        # The choices the request asked for (``generated_choices``): a choice numbered past them is not one
        # the client asked for, and its text and end token count for nothing.
        self.max_choices = max_choices
        self.bounds = bounds
        self.input_price = input_price
        self.output_price = output_price
        self.fee_bps = fee_bps
        self.text_bytes = 0
        self.choices = 1
        # Objects taken that carried something for the client (text, a tool call, a finish reason, an
        # embedding): a hoster's empty chunks (``{"choices": []}``, a bare role) and a usage claim on its own
        # are no sign of progress.
        self.progress = 0
        # For a model registered with its tokenizer (``count``): the completion counter, the router's prompt
        # count, and the text relayed per choice; the usage the client sees is then also held to those counts.
        self.counter: Callable[[list[ChoiceText]], int] | None = None
        self.prompt_count: int | None = None
        self.texts: dict[int, _ChoiceParts] = {}
        self._counted: tuple[tuple[int, int, int], int] | None = None

    def count(self, counter: Callable[[list[ChoiceText]], int], prompt_count: int | None) -> None:
        """Count the completion with ``counter`` (the model's tokenizer) and hold usage to it and to
        ``prompt_count``, from now on."""
        self.counter, self.prompt_count = counter, prompt_count

    def completion_count(self) -> int | None:
        """The completion tokens of the text relayed so far, as the model's tokenizer counts them (``None``:
        not counted); counted again only when more text came."""
        if self.counter is None:
            return None
        choices = [parts.choice() for _, parts in sorted(self.texts.items())]
        seen = (self.text_bytes, len(choices), sum(c.ended for c in choices))
        if self._counted is not None and self._counted[0] == seen:
            return self._counted[1]
        counted = self.counter(choices)
        self._counted = (seen, counted)
        return counted

    def take(self, body: bytes, chunk: bool = True) -> bytes | None:
        """Count the text of ``body`` (a completion, or a chunk frame's chunks, one per line); return it with
        any usage it carries held to the bounds (unchanged when it already was what the gateway would write),
        or ``None`` when it is not JSON objects: a hoster's garbage never reaches the client."""
        if b"\n" in body:
            taken = [self._take_one(line, chunk) for line in frames.chunks(body)]
            return None if not taken or None in taken else b"\n".join(cast(list[bytes], taken))
        return self._take_one(body, chunk)

    def _take_one(self, body: bytes, chunk: bool = True) -> bytes | None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                # orjson reads no integer past 64 bits; a hoster's frame may hold one (in its usage, say).
                doc = json.loads(body)
            except ValueError:
                return None
        if not isinstance(doc, dict):
            return None
        if self.vectors is not None and not _vectors_fit(doc.get("data"), self.vectors):
            return None
        text_before = self.text_bytes
        if b"\r" in body:
            # JSON may carry a carriage return as whitespace, and SSE readers end a line at one: written again
            # without it, no hoster can slip a field or an event boundary into the client's stream.
            body = orjson.dumps(doc)
        finished = self._count(doc.get("choices"), chunk)
        usage = doc.get("usage")
        if finished or self.text_bytes > text_before or self.vectors is not None:
            self.progress += 1
        if not isinstance(usage, dict):
            return body
        if not self.progress:
            # Usage of an answer that gave the client nothing yet: such an attempt is billed nothing (the
            # router pays only for delivered content), so the client is shown no usage either.
            del doc["usage"]
            return orjson.dumps(doc)
        bounds = self.bounds.with_text(self.text_bytes, self.choices)
        prompt, completion, _ = bounds.bound(
            _count_of(usage.get("prompt_tokens")), _count_of(usage.get("completion_tokens"))
        )
        estimated = usage.get("estimated") is True
        if self.counter is not None:
            # As the router bills it (``services.router.service.charge``): the lower of claim and count.
            prompt = min(held_to_count(prompt, self.prompt_count, estimated)[0], bounds.prompt)
            completion = min(held_to_count(completion, self.completion_count(), estimated)[0], bounds.completion)
            estimated = False
        held = client_usage(
            prompt, completion, usage, self.input_price, self.output_price, self.fee_bps, estimated=estimated
        )
        if doc.get("object") == "list":
            del held["completion_tokens"]  # embeddings: nothing generated, and OpenAI writes no such count
        if held == usage:
            return body
        doc["usage"] = held
        return orjson.dumps(doc)

    def _count(self, choices: object, chunk: bool = True) -> bool:
        """Count the text of ``choices`` the client reads (a chunk's ``delta``, a completion's ``message``:
        not the other, which a hoster might add to be counted); whether any carried a finish reason or a tool
        call."""
        if not isinstance(choices, list):
            return False
        marked = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if not isinstance(index, int) or not 0 <= index < self.max_choices:
                continue
            self.choices = max(self.choices, index + 1)
            parts: _ChoiceParts | None = None
            if self.counter is not None:
                parts = self.texts.setdefault(index, _ChoiceParts())
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                marked = True
                if parts is not None:
                    parts.finish = finish
            if self.text:
                text = choice.get("text")
                if isinstance(text, str):
                    self.text_bytes += len(text.encode())
                    if parts is not None:
                        parts.pieces["content"].append(text)
                continue
            part = choice.get("delta" if chunk else "message")
            if not isinstance(part, dict):
                continue
            for key in ("content", "reasoning_content", "refusal"):
                text = part.get(key)
                if isinstance(text, str):
                    self.text_bytes += len(text.encode())
                    if parts is not None:
                        parts.pieces[key].append(text)
            for position, call in enumerate(part.get("tool_calls") or ()):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    marked = True
                    for key in ("name", "arguments"):
                        text = function.get(key)
                        if isinstance(text, str):
                            self.text_bytes += len(text.encode())
                            if parts is not None:
                                slot = call.get("index", position) if isinstance(call.get("index"), int) else position
                                parts.tool(slot)[key].append(text)
        return marked


class _ChoiceParts:
    """The text one choice relayed, piece by piece, for the model's tokenizer to count once it is whole."""

    __slots__ = ("finish", "pieces", "tools")

    def __init__(self) -> None:
        self.pieces: dict[str, list[str]] = {"content": [], "reasoning_content": [], "refusal": []}
        self.tools: dict[int, dict[str, list[str]]] = {}
        self.finish: str | None = None

    def tool(self, slot: int) -> dict[str, list[str]]:
        return self.tools.setdefault(slot, {"name": [], "arguments": []})

    def choice(self) -> ChoiceText:
        calls = [("".join(t["name"]), "".join(t["arguments"])) for _, t in sorted(self.tools.items())]
        return ChoiceText(
            content="".join(self.pieces["content"]),
            reasoning="".join(self.pieces["reasoning_content"]),
            refusal="".join(self.pieces["refusal"]),
            tool_calls=calls,
            # The model's end token: emitted when it stopped on its own, not when cut at its limit.
            ended=self.finish in ("stop", "tool_calls", "function_call"),
        )


def _vectors_fit(data: object, asked: VectorsAsked) -> bool:
    """Whether an embeddings answer's ``data`` holds the vectors asked for (``embedding_vectors``: the adapter
    checks the same; a hoster's own agent may not)."""
    try:
        embedding_vectors(data, asked.inputs, asked.width, asked.encoding)
    except ValueError:
        return False
    return True


def _count_of(value: object) -> int:
    """A token count as a hoster wrote it; what is not a whole number counts as none."""
    return detail_count(value, MAX_COUNT) or 0


# What a request holds, at most, of frames of attempts the router has not named yet (``ReplyStream._hold``):
# normally the first frames of the hoster that just took a failover, which may overtake the router's notice.
EARLY_BYTES = 1 << 20
EARLY_OFFERS = 4

# Frame kinds only the router sends, on the request's control subject.
_ROUTER_KINDS = (bytes([frames.ATTEMPT]), bytes([frames.ERROR]))


class ReplyStream:
    """The frames of one request, in arrival order, with an idle timeout and the serving attempt's deadlines.

    Each attempt answers on a reply subject of its own (``subjects.offer_subject``), which the router names
    when the attempt serves (the route's answer, then a failover notice on the control subject): only frames
    on the serving attempt's subject are read. A frame for an attempt not yet named is held (a little, in
    bounded memory) until its notice arrives; one for an attempt older than the serving one is dropped. So a
    hoster that declined an offer, or whose attempt was abandoned, never reaches the client.

    The idle timeout covers silence of the whole reply subject. On top of it the serving attempt must send its
    first content by its first-byte deadline (plus grace) and then never go ``stall_s`` without content;
    keepalives and frames that carry nothing (``{"choices": []}``, a bare role) do not count. A miss is
    reported to the router once, and from then on that attempt's frames are dropped.

    The serving attempt's chunks, completion and end are numbered from 0: a number skipped means frames were
    lost (a NATS reconnect), and the answer is cut there with an error (``incomplete_response``) rather than
    passed off as whole; ``on_lost`` stops the request. A number seen twice is dropped. A failover notice
    after content reached the client ends the answer with an error: two hosters' answers never mix.

    At most ``max_pending_bytes`` of frames wait for a client that does not read: past it they are dropped,
    the request is stopped (``on_lost``) and the client, if it ever reads again, gets the error
    ``client_too_slow``.

    What reached the client (``delivered``: the attempt, its frames of content, its time to first content on
    this clock) is the network's record the router bills on.
    """

    __slots__ = (
        "_abandoned",
        "_armed",
        "_content",
        "_deadlines",
        "_due",
        "_early",
        "_early_bytes",
        "_heard",
        "_idle_s",
        "_max_pending",
        "_offer",
        "_on_lost",
        "_overflowed",
        "_pending",
        "_queue",
        "_ready",
        "_seq",
        "attempt",
        "attempts",
        "delivered_attempt",
        "delivered_frames",
        "first_content_ms",
        "guard",
        "last_content_ms",
        "request_id",
    )

    def __init__(
        self,
        request_id: str,
        idle_s: float,
        deadlines: Deadlines | None = None,
        on_lost: Callable[[str], None] | None = None,
        max_pending_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[tuple[str | None, bytes]] = asyncio.Queue()
        # Frames to read before the queue's: those of an attempt held until the router named it.
        self._ready: deque[tuple[str | None, bytes]] = deque()
        self._pending = 0
        self._max_pending = max_pending_bytes
        self._overflowed = False
        self._idle_s = idle_s
        self._deadlines = deadlines
        self._on_lost = on_lost
        self.attempt = 1
        # How many attempts served this request so far (each armed once; declined offers are never armed).
        self.attempts = 0
        self._offer: str | None = None
        self._seq = 0
        self._abandoned = 0
        self._content = False
        self._due: float | None = None
        self._heard = self._armed = time.monotonic()
        # Frames of attempts not yet named, by offer (``<attempt>.<token>``), and their bytes.
        self._early: dict[str, list[bytes]] = {}
        self._early_bytes = 0
        self.guard: UsageGuard | None = None
        self.delivered_attempt = 0
        self.delivered_frames = 0
        self.first_content_ms: float | None = None
        self.last_content_ms: float | None = None

    def put(self, offer: str, data: bytes) -> None:
        """Called by the reply subscription for each frame of this request on the subject of offer ``offer``:
        the hosters' frames. A failover notice or an error there did not come from the router (it sends them
        on the control subject): a hoster cannot re-arm deadlines, reprice the usage, name another hoster or
        end the request with an error of its choosing, so they are dropped."""
        if data[:1] in _ROUTER_KINDS:
            return
        self._enqueue(offer, data)

    def put_control(self, data: bytes) -> None:
        """Called by the control subscription: the router's frames."""
        self._enqueue(None, data)

    def _enqueue(self, offer: str | None, data: bytes) -> None:
        if self._overflowed:
            return
        self._pending += len(data)
        if self._pending > self._max_pending:
            self._overflow()
            return
        self._queue.put_nowait((offer, data))

    def _overflow(self) -> None:
        """The client stopped reading: drop what waits for it, stop the request, leave it the error."""
        self._overflowed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending = 0
        if self._on_lost is not None:
            self._on_lost(self.request_id)
        report = errors.client_too_slow()
        error = frames.encode(frames.ERROR, self.attempt, -1, report.model_dump_json().encode())
        self._pending = len(error)
        self._queue.put_nowait((None, error))

    def _get(self) -> tuple[str | None, bytes]:
        item = self._queue.get_nowait()
        self._pending -= len(item[1])
        return item

    def arm(self, attempt: int, first_byte_deadline_ms: float | None, reply_subject: str = "") -> None:
        """Attempt ``attempt`` serves now, on ``reply_subject``; its first content is due within
        ``first_byte_deadline_ms`` (plus grace), and never later than the ingress's own ceiling."""
        self.attempt = attempt
        self.attempts += 1
        self._offer = reply_subject.partition(f".{self.request_id}.")[2] or None
        self._seq = 0
        self._content = False
        self._heard = self._armed = time.monotonic()
        if self._deadlines is not None:
            d = self._deadlines
            wait_s = d.ceiling_s if first_byte_deadline_ms is None else min(d.ceiling_s, first_byte_deadline_ms / 1000)
            self._due = self._heard + wait_s + d.grace_s
        held = self._early.pop(self._offer, None) if self._offer is not None else None
        self._early.clear()
        self._early_bytes = 0
        self._ready.extend((self._offer, data) for data in held or ())

    def _hold(self, offer: str, data: bytes) -> None:
        """Keep a frame of an attempt the router has not named yet (it may be the next to serve)."""
        attempt = offer.partition(".")[0]
        if not attempt.isdigit() or int(attempt) <= self.attempt:
            return  # an older attempt's, or garbage: never read
        if self._early_bytes + len(data) > EARLY_BYTES or len(self._early) >= EARLY_OFFERS:
            return
        self._early.setdefault(offer, []).append(data)
        self._early_bytes += len(data)

    def _take(self, item: tuple[str | None, bytes]) -> frames.Frame | None:
        """Decode a frame; ``None`` for one that means nothing to the client (a keepalive, another attempt's)."""
        offer, data = item
        if offer is not None and offer != self._offer:
            self._hold(offer, data)
            return None
        try:
            frame = frames.decode(data)
        except ValueError:
            return None  # a hoster's garbage: nothing for the client, not even a sign of life
        if frame.kind == frames.ERROR:
            return frame  # the router's word that the request is over, whichever attempt it names
        if frame.kind == frames.ATTEMPT:
            return self._fail_over(frame) if offer is None and frame.attempt > self.attempt else None
        if frame.attempt != self.attempt or frame.attempt <= self._abandoned:
            return None  # does not even count as a sign of life
        self._heard = time.monotonic()
        if frame.kind == frames.KEEPALIVE:
            return None
        if frame.seq != self._seq and frame.kind in (frames.CHUNK, frames.COMPLETION, frames.END):
            return None if frame.seq < self._seq else self._lost(frame)
        self._seq += 1
        if frame.kind in (frames.CHUNK, frames.COMPLETION):
            guard = self.guard
            before = guard.progress if guard is not None else 0
            if guard is not None:
                body = guard.take(frame.body, frame.kind == frames.CHUNK)
                if body is None:
                    return self._malformed(frame)
                frame = frame._replace(body=body)
            if guard is None or guard.progress > before:
                self._progressed()
        if frame.kind in (frames.END, frames.COMPLETION) and not self._delivered():
            return self._empty(frame)
        return frame

    def _delivered(self) -> bool:
        """Whether the serving attempt sent the client any content."""
        return self.delivered_frames > 0 and self.delivered_attempt == self.attempt

    def _empty(self, frame: frames.Frame) -> frames.Frame | None:
        """The serving attempt ended its answer with nothing for the client (no text, no tool call, no finish
        reason: a usage claim at most). It failed, as one whose first content never came: the miss is reported,
        the frame dropped, and the router fails over or ends the request with an error."""
        if self._deadlines is None:
            return frame
        self._abandoned, self._due = max(self._abandoned, self.attempt), None
        self._deadlines.overdue(self.request_id, self.attempt, "empty_answer")
        return None

    def _progressed(self) -> None:
        """The serving attempt sent the client something: its stall deadline starts again."""
        if self.delivered_frames == 0 or self.delivered_attempt != self.attempt:
            self.delivered_attempt, self.delivered_frames = self.attempt, 0
            self.first_content_ms = (self._heard - self._armed) * 1000
        self.last_content_ms = (self._heard - self._armed) * 1000
        self.delivered_frames += 1
        if self._deadlines is not None:
            self._content = True
            self._due = self._heard + self._deadlines.stall_s

    def _fail_over(self, frame: frames.Frame) -> frames.Frame:
        """The router's notice that another attempt serves now: armed, unless the client already has part of
        an answer (then it ends: two hosters' answers never mix)."""
        if self.delivered_frames:
            return self._end_attempt(frame, errors.upstream_broke_off())
        self._heard = time.monotonic()
        self.arm(frame.attempt, _deadline_of(frame.body), _reply_of(frame.body))
        if self.guard is not None:
            self.guard = _repriced(self.guard, frame.body)
        return frame

    def _malformed(self, frame: frames.Frame) -> frames.Frame:
        """The serving hoster sent something other than JSON objects: the answer ends here (it pays for the
        text relayed before)."""
        return self._end_attempt(frame, errors.malformed_answer())

    def _lost(self, frame: frames.Frame) -> frames.Frame:
        """Frames before ``frame`` never came: the answer ends here."""
        return self._end_attempt(frame, errors.incomplete_response(self._seq, frame.attempt))

    def _end_attempt(self, frame: frames.Frame, report: ErrorReport) -> frames.Frame:
        """End the answer at ``frame`` with ``report``: stop the request, drop the rest of the attempt."""
        self._abandoned, self._due = max(self._abandoned, frame.attempt), None
        if self._on_lost is not None:
            self._on_lost(self.request_id)
        return frames.Frame(frames.ERROR, frame.attempt, -1, report.model_dump_json().encode())

    async def next(self) -> frames.Frame:
        """The next frame that means something to the client; raises ``TimeoutError`` when the request heard
        nothing alive for the idle timeout."""
        while True:
            if self._ready:
                item = self._ready.popleft()
            elif self._queue.empty():
                waited = await self._wait()
                if waited is None:
                    continue
                item = waited
            else:
                item = self._get()
            frame = self._take(item)
            if frame is not None:
                return frame

    async def _wait(self) -> tuple[str | None, bytes] | None:
        """The next frame off the wire; ``None`` when the serving attempt just missed a deadline."""
        idle_due = self._heard + self._idle_s
        due = self._due if self._due is not None and self._due < idle_due else idle_due
        try:
            async with asyncio.timeout(max(0.0, due - time.monotonic())):
                item = await self._queue.get()
                self._pending -= len(item[1])
                return item
        except TimeoutError:
            if due == idle_due:
                raise
        assert self._deadlines is not None
        self._abandoned, self._due = self.attempt, None
        self._heard = time.monotonic()
        reason: CancelReason = "stalled" if self._content else "first_byte_timeout"
        self._deadlines.overdue(self.request_id, self.attempt, reason)
        return None

    def ready_frames(self) -> list[frames.Frame]:
        """Frames already queued, without waiting: lets a stream write several at once."""
        ready = []
        while self._ready or not self._queue.empty():
            frame = self._take(self._ready.popleft() if self._ready else self._get())
            if frame is not None:
                ready.append(frame)
        return ready


def _repriced(guard: UsageGuard, body: bytes) -> UsageGuard:
    """The guard at the prices an ATTEMPT frame names (the hoster that serves after a failover)."""
    try:
        named = orjson.loads(body)
        prices = int(named["input_price"]), int(named["output_price"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return guard
    repriced = UsageGuard(guard.bounds, max(0, prices[0]), max(0, prices[1]), guard.fee_bps, guard.vectors, guard.text,
                          guard.max_choices)  # fmt: skip
    if guard.counter is not None:
        repriced.count(guard.counter, guard.prompt_count)
    return repriced


def _reply_of(body: bytes) -> str:
    """The reply subject an ATTEMPT frame names (the router's notice of the attempt that serves now)."""
    try:
        value = orjson.loads(body).get("reply_subject")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _deadline_of(body: bytes) -> float | None:
    """The first-byte deadline an ATTEMPT frame names, if it names a usable one."""
    try:
        value = orjson.loads(body).get("first_byte_deadline_ms")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


class KeyCache:
    """Recent answers about API keys (refusals too), by key hash, each trusted for ``ttl_s``; at most
    ``max_entries``, the least recently used going first."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, KeyInfo]] = OrderedDict()

    def get(self, key_hash: str, now: float) -> KeyInfo | None:
        """The cached answer, unless it is older than the TTL."""
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] <= now:
            return None
        self._entries.move_to_end(key_hash)
        return hit[1]

    def put(self, key_hash: str, info: KeyInfo, now: float) -> None:
        """Remember an answer, forgetting the least recently used one when full."""
        self._entries[key_hash] = (now + self._ttl_s, info)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, key_hash: str) -> None:
        """Drop what is known of a key (it was revoked or its limits changed)."""
        self._entries.pop(key_hash, None)

    def __len__(self) -> int:
        return len(self._entries)


class Gateway:
    """Publishes requests to the router and collects their reply frames."""

    def __init__(
        self,
        ingress_id: str,
        route_timeout_s: float,
        idle_timeout_s: float,
        key_cache_s: float,
        logger: logging.Logger,
        first_byte_ceiling_s: float = 30.0,
        deadline_grace_s: float = 2.0,
        stall_timeout_s: float = 35.0,
        max_pending_bytes: int = 4 * 1024 * 1024,
        max_subscription_bytes: int = 128 * 1024 * 1024,
        invalid_keys_per_minute: float = 60.0,
        invalid_keys_burst: int = 20,
        models_cache_s: float = 1.0,
    ):
        self.ingress_id = ingress_id
        self._max_pending_bytes = max_pending_bytes
        self._max_subscription_bytes = max_subscription_bytes
        self._deadlines = Deadlines(first_byte_ceiling_s, deadline_grace_s, stall_timeout_s, self._overdue)
        self._keys = KeyCache(key_cache_s)
        # Keys seen valid within the hour: exempt from the wrong-key budget of their address.
        self._known_good = KeyCache(3600.0)
        self._lookups: dict[str, asyncio.Task[KeyInfo]] = {}
        self._failures = FailureBudget(invalid_keys_per_minute, invalid_keys_burst)
        self._models_cache_s = models_cache_s
        self._models: tuple[float, ModelsListing] | None = None
        self._route_timeout_s = route_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._log = logger
        self.log = logger
        self._streams: dict[str, ReplyStream] = {}
        self._tokenizers: RegisteredTokenizers | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._control: Subscription | None = None
        self._key_changes: Subscription | None = None
        self._prefix_len = len(subjects.reply_subject(ingress_id, ""))

    @property
    def ready(self) -> bool:
        """Connected to NATS and subscribed for replies."""
        return self._nc is not None and self._nc.is_connected and self._sub is not None

    @property
    def max_body_bytes(self) -> int | None:
        """The largest request body that fits a NATS message of this server, leaving room for the envelope."""
        if self._nc is None or not self._nc.max_payload:
            return None
        return int(self._nc.max_payload) - ENVELOPE_ROOM

    @property
    def open_requests(self) -> int:
        """Requests waiting for or streaming their reply."""
        return len(self._streams)

    async def open(self, nc: Client) -> None:
        """Subscribe this instance's reply wildcard; from then on requests can be published."""
        self._nc = nc
        self._tokenizers = RegisteredTokenizers(nats_requester(nc))
        # Bounded: past it NATS drops frames, and the requests that lose some end with an error (never short).
        self._sub = await nc.subscribe(
            subjects.reply_inbox(self.ingress_id),
            cb=self._on_reply,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=self._max_subscription_bytes,
        )
        self._control = await nc.subscribe(subjects.control_inbox(self.ingress_id), cb=self._on_control)
        self._key_changes = await nc.subscribe(subjects.KEY_CHANGED, cb=self._on_key_changed)
        await nc.flush()

    async def _on_key_changed(self, msg: Msg) -> None:
        """A key was revoked or its limits changed: the next request with it asks billing again."""
        try:
            changed = KeyChanged.model_validate_json(msg.data)
        except ValidationError:
            return
        self._keys.forget(changed.key_hash)

    async def close(self) -> None:
        """Unsubscribe and wait for background publishes."""
        if self._key_changes is not None:
            await self._key_changes.unsubscribe()
            self._key_changes = None
        if self._control is not None:
            await self._control.unsubscribe()
            self._control = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)

    async def _on_reply(self, msg: Msg) -> None:
        # ``ingress.reply.<ingress>.<request>.<attempt>.<token>``: the request, then its offer.
        request_id, _, offer = msg.subject[self._prefix_len :].partition(".")
        stream = self._streams.get(request_id)
        if stream is not None and offer:
            stream.put(offer, msg.data)

    async def _on_control(self, msg: Msg) -> None:
        stream = self._streams.get(msg.subject.rpartition(".")[2])
        if stream is not None:
            stream.put_control(msg.data)

    def open_stream(self, request_id: str) -> ReplyStream:
        """Start collecting frames for ``request_id``; call before the request is published."""
        max_pending = max(self._max_pending_bytes, 2 * int(self._nc.max_payload or 0) if self._nc else 0)
        stream = self._streams[request_id] = ReplyStream(
            request_id, self._idle_timeout_s, self._deadlines, on_lost=self.cancel, max_pending_bytes=max_pending
        )
        return stream

    def close_stream(self, request_id: str) -> None:
        """Stop collecting frames for ``request_id``."""
        self._streams.pop(request_id, None)

    async def route(self, request: RouteRequest, retry_after: int) -> RouteAccepted:
        """Ask a router to route ``request``; raises ``GatewayError`` if rejected or unanswered."""
        if self._nc is None:
            raise GatewayError(errors.service_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(
                subjects.ROUTE_REQUEST,
                request.model_dump_json().encode(),
                timeout=self._route_timeout_s,
                headers=inject_headers(),
            )
        except NoRespondersError:
            raise GatewayError(
                errors.service_unavailable("No router is available to route this request.", retry_after)
            ) from None
        except (NatsTimeout, TimeoutError):
            # The router may still admit and start it: it must stop it, and charge nothing.
            self._cancel(RequestCancelled(request_id=request.request_id, reason="route_timeout"))
            raise GatewayError(errors.service_unavailable("The router did not answer in time.", retry_after)) from None
        decision = _DECISION.validate_json(reply.data)
        if isinstance(decision, RouteAccepted):
            return decision
        raise GatewayError(decision.error, decision.headers)

    async def list_models(self, retry_after: int) -> ModelsListing:
        """The models live on the network, as a router saw them at most ``models_cache_s`` ago."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < self._models_cache_s:
            return self._models[1]
        if self._nc is None:
            raise GatewayError(errors.service_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(subjects.LIST_MODELS, b"", timeout=self._route_timeout_s)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise GatewayError(
                errors.service_unavailable("No router is available to list models.", retry_after)
            ) from None
        listing = ModelsListing.model_validate_json(reply.data)
        self._models = (time.monotonic(), listing)
        return listing

    async def verify_key(self, key_hash: str, retry_after: int, address: str = "") -> KeyInfo:
        """Who holds the key with this hash: from the cache, else from billing, unless the client's
        ``address`` used up its budget of wrong keys and the key was not valid within the hour (a 429 then,
        billing is not asked)."""
        now = time.monotonic()
        cached = self._keys.get(key_hash, now)
        if cached is not None:
            return cached
        # One lookup per key at a time: a burst of requests with a key not yet cached waits for the first.
        pending = self._lookups.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        lookup = asyncio.get_running_loop().create_task(self._look_up(key_hash, retry_after, address, now))
        self._lookups[key_hash] = lookup
        lookup.add_done_callback(lambda _: self._lookups.pop(key_hash, None))
        return await asyncio.shield(lookup)

    async def _look_up(self, key_hash: str, retry_after: int, address: str, now: float) -> KeyInfo:
        # A key seen valid lately is looked up again (revocation holds) whatever its address spent.
        known = self._known_good.get(key_hash, now) is not None
        wait_s = 0.0 if known else self._failures.wait_s(address, now)
        if wait_s > 0:
            raise GatewayError(errors.too_many_invalid_keys(wait_s))
        # Spent before billing is asked (concurrent requests must not all pass on the last token), given back
        # when the key is good.
        self._failures.spend(address, now)
        try:
            reply = await self._ask(subjects.VERIFY_KEY, VerifyKey(key_hash=key_hash), "check API keys", retry_after)
        except GatewayError:
            self._failures.refund(address)
            raise
        info = KeyInfo.model_validate_json(reply)
        self._keys.put(key_hash, info, now)
        if info.status == "valid":
            self._failures.refund(address)
            self._known_good.put(key_hash, info, now)
        return info

    async def credits(self, account_id: str, retry_after: int) -> CreditsReport:
        """An account's balance, reservations, today's spend and cap."""
        reply = await self._ask(subjects.SHOW_CREDITS, CreditsQuery(account_id=account_id), "show credits", retry_after)
        return CreditsReport.model_validate_json(reply)

    async def key(self, caller: Caller, retry_after: int) -> KeyReport | None:
        """The caller's key, its limits and spend, and its account's money (``None``: billing no longer has
        that key for that account)."""
        query = KeyQuery(key_id=caller.key_id, account_id=caller.account_id)
        reply = await self._ask(subjects.SHOW_KEY, query, "show the key", retry_after)
        return KeyReport.model_validate_json(reply) if reply.strip() not in (b"", b"null") else None

    async def usage(self, account_id: str, key_id: str | None, limit: int, retry_after: int) -> UsageReport:
        """An account's recent requests; with ``key_id``, only that key's."""
        query = UsageQuery(account_id=account_id, key_id=key_id, limit=limit)
        return UsageReport.model_validate_json(await self._ask(subjects.LIST_USAGE, query, "list usage", retry_after))

    async def generation(self, request_id: str, key_id: str, retry_after: int) -> GenerationRecord | None:
        """The routing record of ``request_id`` if ``key_id`` made it."""
        query = GenerationQuery(request_id=request_id, key_id=key_id)
        reply = await self._ask(subjects.SHOW_GENERATION, query, "show generations", retry_after)
        return GenerationRecord.model_validate_json(reply) if reply.strip() not in (b"", b"null") else None

    async def billing(
        self, subject: str, query: BaseModel, answer: type[Answer], what: str, retry_after: int
    ) -> Answer:
        """One request/reply to billing, its answer parsed; a 503 saying we cannot ``what`` when it is away."""
        return answer.model_validate_json(await self._ask(subject, query, what, retry_after))

    async def manage(self, subject: str, query: BaseModel, answer: type[Answer], retry_after: int) -> Answer:
        """One management request/reply to billing (``libs.contracts.management``), its answer parsed."""
        return answer.model_validate_json(await self._ask(subject, query, "manage the account", retry_after))

    async def _ask(self, subject: str, query: BaseModel, what: str, retry_after: int) -> bytes:
        """Request/reply to billing; a 503 ``GatewayError`` when it cannot answer."""
        if self._nc is None:
            raise GatewayError(errors.service_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(
                subject, query.model_dump_json().encode(), timeout=self._route_timeout_s, headers=inject_headers()
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise GatewayError(
                errors.service_unavailable(f"Billing is unavailable, so we cannot {what} now.", retry_after)
            ) from None
        return bytes(reply.data)

    async def tokenizer(self, model: str) -> ModelTokenizer | None:
        """``model``'s registered tokenizer, to count what the client receives (``None``: not registered, or
        billing cannot say now: the router's bounds hold then)."""
        if self._tokenizers is None:
            return None
        try:
            return await self._tokenizers.get(model)
        except Exception as exc:
            self._log.warning("tokenizer unavailable", extra={"model": model, "error": repr(exc)})
            return None

    def cancel(self, request_id: str) -> None:
        """Tell the routers the client left; safe to call from a cancelled task."""
        self._cancel(RequestCancelled(request_id=request_id))

    def delivered(self, router_id: str, replies: ReplyStream) -> None:
        """Tell the router that owns the request, once its response to the client ended, what reached the
        client: the network's record it bills on (nothing, if nothing did)."""
        if self._nc is None or not router_id:
            return
        guard = replies.guard
        delivered = replies.delivered_frames > 0
        note = RequestDelivered(
            request_id=replies.request_id,
            attempt=replies.delivered_attempt if delivered else max(1, replies.attempt),
            text_bytes=guard.text_bytes if guard is not None and delivered else 0,
            choices=guard.choices if guard is not None else 1,
            frames=replies.delivered_frames,
            ttft_ms=replies.first_content_ms if delivered else None,
            last_content_ms=replies.last_content_ms if delivered else None,
            completion_tokens=guard.completion_count() if guard is not None and delivered else None,
        )
        self._publish(subjects.request_delivered(router_id), note.model_dump_json().encode())

    def _overdue(self, request_id: str, attempt: int, reason: CancelReason) -> None:
        """Tell the routers the serving attempt missed a deadline the ingress holds it to."""
        self._log.warning("attempt overdue", extra={"request_id": request_id, "attempt": attempt, "reason": reason})
        self._cancel(RequestCancelled(request_id=request_id, reason=reason, attempt=attempt))

    def _cancel(self, event: RequestCancelled) -> None:
        self._publish(subjects.REQUEST_CANCELLED, event.model_dump_json().encode())

    def _publish(self, subject: str, data: bytes) -> None:
        """Publish in the background; safe to call from a cancelled task."""
        if self._nc is None:
            return
        task = asyncio.get_running_loop().create_task(self._nc.publish(subject, data))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
