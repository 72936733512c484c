"""Attempts against the hosters' OpenAI-compatible servers: the adapter's I/O, owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import httpx
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from yarl import URL

from libs.contracts import frames, subjects
from libs.contracts.common import CHAT, COMPLETIONS, EMBEDDINGS
from libs.contracts.hosters import HosterHeartbeat, HosterStatus
from libs.contracts.pricing import generated_choices
from libs.contracts.routing import AttemptAccepted, AttemptDispatch, AttemptFinished, AttemptOutcome
from libs.platform.metrics import IN_FLIGHT, TIME_TO_FIRST_TOKEN, TOKENS
from libs.platform.natsauth import HOSTER_MAX_PAYLOAD
from libs.platform.telemetry import REQUEST_ID, inject_headers, span_attributes
from services.hoster_adapter.profiles import PROFILES
from services.hoster_adapter.service import (
    AttemptEnd,
    ChunkRewriter,
    CompletionAssembler,
    SseDataLines,
    StreamTally,
    TextAssembler,
    UpstreamFailure,
    answer_as_chunk,
    attempt_report,
    deadline_error,
    embeddings_body,
)
from services.hoster_adapter.settings import AdapterSettings, HosterConfig


@dataclass(slots=True)
class ActiveAttempt:
    """An attempt being served: its command, its task, and when the reply subject last heard from it."""

    dispatch: AttemptDispatch
    last_sent: float = field(default_factory=time.monotonic)
    seq: int = 0
    dropped: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


TRACER = trace.get_tracer("computeshare.hoster_adapter")
# Statuses an upstream answers because of the client's own parameters; 401, 403, 404, 408 and 429 are the
# hoster's configuration or capacity, and count against it.
CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})
# Room in a NATS message for a frame's header around the body (a chunk or an assembled completion).
FRAME_ROOM = 4096
# A peer adapter of the same hoster is gone after this many of its heartbeat intervals without one; its
# interval is believed within these bounds.
PEER_BEATS = 3
PEER_INTERVAL_S = (0.1, 60.0)
# After its first heartbeat an adapter waits this long before taking attempts: the hoster's other adapters
# answer a newcomer's heartbeat with theirs at once, so it knows its share before it takes any.
JOIN_WAIT_S = 0.2
# The upstream HTTP client's longest wait for a pooled or new connection, and how long an idle one is kept
# (under uvicorn's and most servers' own keep-alive of 5 s or more, so the server is rarely the one to close it).
POOL_TIMEOUT_S = 5.0
KEEPALIVE_S = 5.0
# The upstream's path under the hoster's base URL, per endpoint.
PATHS = {CHAT: "chat/completions", COMPLETIONS: "completions", EMBEDDINGS: "embeddings"}


def capacity_share(capacity: int, adapters: list[str], adapter_id: str) -> int:
    """This adapter's part of a hoster's ``capacity`` when ``adapters`` (itself among them) front it: an even
    split, the remainder to the first ids in order, so the parts add up to the capacity exactly."""
    ordered = sorted(set(adapters) | {adapter_id})
    base, extra = divmod(capacity, len(ordered))
    return base + (1 if ordered.index(adapter_id) < extra else 0)


class HosterAdapter:
    """Runs attempts on the hosters it fronts and announces them; one per process."""

    def __init__(self, settings: AdapterSettings, adapter_id: str, logger: logging.Logger) -> None:
        self.adapter_id = adapter_id
        self.hosters: dict[str, HosterConfig] = {h.id: h for h in settings.all_hosters()}
        self._settings = settings
        self._log = logger
        self._active: dict[str, ActiveAttempt] = {}
        self._in_flight: Counter[str] = Counter()
        # The other live adapters of each hoster (replicas of a platform adapter, or of a hoster's agent):
        # hoster id -> adapter id -> when it stops counting (monotonic). Capacity is split among them.
        self._peers: dict[str, dict[str, float]] = {h: {} for h in self.hosters}
        self._joined = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._nc: Client | None = None
        self._http: aiohttp.ClientSession | None = None
        # Each hoster's endpoint URLs, parsed once.
        self._urls: dict[str, dict[str, URL]] = {
            h.id: {endpoint: URL(f"{h.base_url}/{path}") for endpoint, path in PATHS.items()}
            for h in self.hosters.values()
        }
        IN_FLIGHT.labels("hoster_adapter").set_function(lambda: len(self._active))

    async def open(self, nc: Client) -> None:
        """Take the NATS connection, open the HTTP client, start heartbeats and keepalives."""
        s = self._settings
        self._nc = nc
        # aiohttp directly: httpx's layers over it (request building, URL merging, auth and redirect handling,
        # its cookie jar) cost more CPU per call than aiohttp's own work, and the adapter's CPU is the
        # gateway's bottleneck. Hosters are strangers: nothing they send persists here (no cookie jar), no
        # redirect is followed, and the body is read as sent (no decompression; none is asked for).
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=s.max_connections,
                keepalive_timeout=KEEPALIVE_S,
                # The CA bundle httpx used (certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set).
                ssl=httpx.create_ssl_context(),
            ),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=POOL_TIMEOUT_S, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        for hoster_id in self.hosters:
            await nc.subscribe(subjects.hoster_heartbeat(hoster_id), cb=self._peer_heartbeat)
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._keepalive_loop(), name="keepalive"),
        ]

    async def drain(self, grace_s: float) -> None:
        """Stop announcing and taking attempts (routers stop sending work), let running attempts finish for
        ``grace_s``, then cancel the rest; their outcomes are published while the connection is still up."""
        self._draining = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.close()

    def heartbeats(self) -> list[HosterHeartbeat]:
        """What this adapter announces now: one heartbeat per hoster, each on that hoster's own subject."""
        return [
            HosterHeartbeat(
                adapter_id=self.adapter_id,
                interval_s=self._settings.heartbeat_interval_s,
                hosters=[
                    HosterStatus(
                        hoster_id=h.id,
                        name=h.name,
                        cloud=h.cloud,
                        region=h.region,
                        capacity=h.capacity,
                        in_flight=self._in_flight[h.id],
                        models=[m.offer() for m in h.models],
                        advertised_ttft_ms=h.advertised_ttft_ms,
                        supported_parameters=PROFILES[h.profile].advertised(),
                    )
                ],
            )
            for h in self.hosters.values()
        ]

    def share(self, hoster: HosterConfig) -> int:
        """The part of ``hoster``'s capacity this adapter may use: all of it when alone, else an even split
        with the hoster's other live adapters (so the capacity holds however many replicas front it)."""
        now = time.monotonic()
        peers = self._peers.get(hoster.id, {})
        return capacity_share(hoster.capacity, [a for a, until in peers.items() if until > now], self.adapter_id)

    async def _peer_heartbeat(self, msg: Msg) -> None:
        """Another adapter of one of our hosters heartbeated: count it until it misses ``PEER_BEATS``; a new one
        hears our heartbeat back at once."""
        try:
            beat = HosterHeartbeat.model_validate_json(msg.data)
        except ValueError:
            return
        hoster_id = subjects.hoster_of(msg.subject)
        peers = self._peers.get(hoster_id)
        if peers is None or beat.adapter_id == self.adapter_id:
            return
        interval = min(max(beat.interval_s, PEER_INTERVAL_S[0]), PEER_INTERVAL_S[1])
        new = beat.adapter_id not in peers or peers[beat.adapter_id] <= time.monotonic()
        if len(peers) >= 1024 and new:
            return  # a flood of made-up adapter ids from the hoster's own credentials: ignore it
        peers[beat.adapter_id] = time.monotonic() + PEER_BEATS * interval
        if new and not self._draining and self._nc is not None:
            for heartbeat in self.heartbeats():
                if heartbeat.hosters[0].hoster_id == hoster_id:
                    await self._nc.publish(msg.subject, heartbeat.model_dump_json().encode())

    async def accept(self, hoster_id: str, dispatch: AttemptDispatch, reply: str | None) -> AttemptAccepted:
        """Take an attempt unless it is not this hoster's, the hoster is at this adapter's share of its
        capacity, or the adapter is draining; the work runs in its own task. The answer goes to the
        dispatching router."""
        if not self._joined.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._joined.wait(), JOIN_WAIT_S * 10)
        hoster = self.hosters.get(hoster_id)
        reason = None
        if hoster is None or dispatch.hoster_id != hoster_id:
            reason = "unknown hoster"
        elif not reply or reply != dispatch.reply_subject:
            reason = "no reply subject"
        elif self._draining:
            reason = "adapter shutting down"
        elif self._in_flight[hoster_id] >= self.share(hoster):
            reason = "hoster at capacity"
        answer = AttemptAccepted(
            request_id=dispatch.request_id,
            attempt=dispatch.attempt,
            accepted=reason is None,
            adapter_id=self.adapter_id,
            reason=reason,
        )
        if hoster is not None and reason is None:
            active = ActiveAttempt(dispatch)
            self._active[dispatch.request_id] = active
            self._in_flight[hoster.id] += 1
            active.task = task = asyncio.create_task(self._run(hoster, active))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._nc is not None:
            subject = subjects.attempt_accepted(hoster_id, dispatch.router_id)
            await self._nc.publish(subject, answer.model_dump_json().encode())
        return answer

    def cancel(self, request_id: str) -> bool:
        """Stop the attempt of ``request_id`` if it runs here; the upstream request is closed."""
        active = self._active.get(request_id)
        if active is None or active.task is None:
            return False
        active.task.cancel()
        return True

    async def _run(self, hoster: HosterConfig, active: ActiveAttempt) -> None:
        dispatch = active.dispatch
        REQUEST_ID.set(dispatch.request_id)
        started = time.monotonic()
        tally = StreamTally()
        outcome: AttemptOutcome = "failed"
        error: str | None = None
        status: int | None = None
        client_error = False
        ttft: list[float] = []
        span = TRACER.start_span(
            f"upstream {dispatch.endpoint}",
            kind=SpanKind.CLIENT,
            attributes=span_attributes(request_id=dispatch.request_id, hoster_id=hoster.id, model=dispatch.model),
        )
        try:
            with trace.use_span(span, end_on_exit=True):
                if dispatch.endpoint == EMBEDDINGS:
                    await self._embed(hoster, active, tally, ttft)
                else:
                    await self._stream(hoster, active, tally, ttft)
            outcome = "succeeded"
        except asyncio.CancelledError:
            outcome = "cancelled"
        except UpstreamFailure as exc:
            error, status, client_error = str(exc), exc.status, exc.client_error
        except aiohttp.ClientError as exc:
            error = f"upstream {type(exc).__name__}: {exc}"
        except Exception as exc:
            self._log.exception("attempt crashed", extra={"request_id": dispatch.request_id})
            error = f"adapter error: {type(exc).__name__}"
        finally:
            self._active.pop(dispatch.request_id, None)
            self._in_flight[hoster.id] -= 1
        event = attempt_report(
            dispatch,
            hoster.id,
            self.adapter_id,
            # Every frame goes through _send_frame, which numbers it: how many the client was sent.
            AttemptEnd(outcome, error, status, client_error, active.seq),
            tally,
            ttft[0] if ttft else None,
            (time.monotonic() - started) * 1000,
            active.dropped,
        )
        # The upstream's counts go to the router as reported (it holds them to the request's bounds and notes
        # a discrepancy); the adapter's own counters take them only from zero up.
        TOKENS.labels("in", dispatch.model).inc(max(0, event.usage.prompt_tokens))
        TOKENS.labels("out", dispatch.model).inc(max(0, event.usage.completion_tokens))
        if event.ttft_ms is not None:
            TIME_TO_FIRST_TOKEN.labels("hoster_adapter").observe(event.ttft_ms / 1000)
        if error:
            self._log.warning("attempt failed", extra={"request_id": dispatch.request_id, "error": error})
        await self._publish_finished(dispatch.router_id, event)

    async def _stream(self, hoster: HosterConfig, active: ActiveAttempt, tally: StreamTally, ttft: list[float]) -> None:
        """Call the upstream streaming, forward or assemble its chunks (``active.seq`` counts the frames sent).

        Everything the upstream sends is held to the settings' bounds, and the whole exchange runs under one
        deadline: the first chunk's, then moved on with each chunk by the stall limit, never past the
        attempt's longest duration. Past it the request is cancelled and the upstream connection closed.
        """
        assert self._http is not None
        assert self._nc is not None
        s = self._settings
        dispatch = active.dispatch
        body, active.dropped = PROFILES[hoster.profile].prepare(
            dispatch.body, dispatch.upstream_model, dispatch.max_tokens, dispatch.endpoint, dispatch.stream
        )
        headers = self._headers(hoster, "text/event-stream")
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        first_byte_s = self._first_byte_s(dispatch)
        ends_at = loop.time() + s.max_attempt_duration_s
        stall_s = s.stall_timeout_s
        max_bytes = s.max_attempt_bytes
        max_payload = self._max_payload()
        rewriter = ChunkRewriter(dispatch) if dispatch.stream else None
        assembler: CompletionAssembler | TextAssembler | None = None
        if not dispatch.stream:
            choices = generated_choices(dispatch.body, dispatch.endpoint)
            if choices > s.max_choices:
                # The request's own shape, not the hoster's answer, is past the bound: the client's error
                # (no failover, no hoster's trust lost), said before the upstream is asked anything.
                raise UpstreamFailure(
                    f"too_many_choices: the request asks for {choices} choices (n, best_of, prompts), more than "
                    f"the {s.max_choices} one answer may hold",
                    400,
                    client_error=True,
                )
            budget = min(s.max_completion_bytes, max_payload)
            text = dispatch.endpoint == COMPLETIONS
            assembler = TextAssembler(choices, budget) if text else CompletionAssembler(choices, budget)
        done = False
        received = 0
        url = self._urls[hoster.id][dispatch.endpoint]
        content = orjson.dumps(body)
        if not body["stream"]:
            assert assembler is not None
            await self._answer_whole(hoster, active, tally, ttft, url, content, assembler)
            return
        try:
            async with asyncio.timeout_at(min(loop.time() + first_byte_s, ends_at)) as deadline:
                response = await self._send(url, content, headers)
                try:
                    if response.status != 200:
                        raise await self._refusal(response)
                    splitter = SseDataLines(min(s.max_line_bytes, max_payload))
                    # The first [DONE] ends the stream: nothing after it is read, forwarded or counted, so an
                    # upstream can neither add to a finished answer nor hold the attempt open.
                    read = response.content.readany
                    while not done and (data := await read()):
                        received += len(data)
                        if received > max_bytes:
                            raise UpstreamFailure(f"response_too_large: the upstream sent over {max_bytes} bytes")
                        payloads = splitter.feed(data)
                        if not payloads:
                            continue
                        deadline.reschedule(min(loop.time() + stall_s, ends_at))
                        # Every chunk of this read goes out in one frame (up to the largest message), so a
                        # fast upstream costs a message per read, not per token; the first waits for nothing.
                        batch: list[bytes] = []
                        size = 0
                        try:
                            for payload in payloads:
                                if payload == b"[DONE]":
                                    done = True
                                    break
                                if not ttft:
                                    ttft.append(time.monotonic() - started)
                                try:
                                    chunk = orjson.loads(payload)
                                    tally.observe(chunk)
                                    out = None if rewriter is None else rewriter.rewrite(chunk)
                                    if assembler is not None:
                                        assembler.add(chunk)
                                except (ValueError, TypeError, AttributeError) as exc:
                                    raise UpstreamFailure(f"invalid_chunk: {type(exc).__name__}") from exc
                                if out is not None:
                                    if batch and size + len(out) + 1 > max_payload:
                                        await self._send_chunks(active, batch)
                                        batch, size = [], 0
                                    batch.append(out)
                                    size += len(out) + 1
                        finally:
                            if batch:
                                await self._send_chunks(active, batch)
                finally:
                    # Back to the pool when the body was read to its end (an honest upstream's ends at [DONE]),
                    # else the connection is closed: reading stopped at [DONE] whatever came after it.
                    response.release()
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise UpstreamFailure(self._deadline_error(ttft, loop.time() >= ends_at, first_byte_s)) from exc
        if not done:
            raise UpstreamFailure("upstream closed the stream before [DONE]")
        if assembler is not None:
            await self._send_completion(active, tally, assembler)
        else:
            if rewriter is not None and dispatch.include_usage and not rewriter.usage_sent:
                await self._send_frame(active, frames.CHUNK, rewriter.usage_chunk(tally.usage(dispatch.body)))
            await self._send_frame(active, frames.END)

    async def _send_completion(
        self, active: ActiveAttempt, tally: StreamTally, assembler: CompletionAssembler | TextAssembler
    ) -> None:
        """The assembled answer as one frame, with the usage the upstream reported (else an estimate)."""
        dispatch = active.dispatch
        max_payload = self._max_payload()
        usage = tally.usage(dispatch.body)
        completion = assembler.completion(dispatch, usage, tally.system_fingerprint, tally.reported_usage)
        if len(completion) > max_payload:
            raise UpstreamFailure(f"completion_too_large: the assembled answer is over {max_payload} bytes")
        await self._send_frame(active, frames.COMPLETION, completion)

    async def _answer_whole(
        self,
        hoster: HosterConfig,
        active: ActiveAttempt,
        tally: StreamTally,
        ttft: list[float],
        url: URL,
        content: bytes,
        assembler: CompletionAssembler | TextAssembler,
    ) -> None:
        """Ask the upstream unstreamed (its profile ``answers_unstreamed``: only a whole answer carries its usage)
        and send the client its answer, assembled from the upstream's as from a one-chunk stream, so it is held
        to the same bounds. Nothing arrives before the whole answer is generated: the deadline is the attempt's
        longest duration (and the HTTP client's read timeout), not the first byte's; the time to the answer is the
        attempt's first token."""
        s = self._settings
        started = time.monotonic()
        limit = min(s.max_attempt_bytes, self._max_payload())
        raw = bytearray()
        try:
            async with asyncio.timeout(s.max_attempt_duration_s) as deadline:
                response = await self._send(url, content, self._headers(hoster))
                try:
                    if response.status != 200:
                        raise await self._refusal(response)
                    read = response.content.readany
                    while data := await read():
                        raw += data
                        if len(raw) > limit:
                            raise UpstreamFailure(f"response_too_large: the upstream's answer is over {limit} bytes")
                finally:
                    response.release()  # back to the pool when read to its end, else closed
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the HTTP client's own timeout (connecting, reading), not the deadline
            raise UpstreamFailure(self._deadline_error([], True, self._first_byte_s(active.dispatch))) from exc
        ttft.append(time.monotonic() - started)
        try:
            chunk = answer_as_chunk(orjson.loads(raw))
            tally.observe(chunk)
            assembler.add(chunk)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UpstreamFailure(f"invalid_answer: {type(exc).__name__}") from exc
        await self._send_completion(active, tally, assembler)

    async def _embed(self, hoster: HosterConfig, active: ActiveAttempt, tally: StreamTally, ttft: list[float]) -> None:
        """Ask the upstream for embeddings (one answer, no stream) and send the client's body as one frame. The
        answer is due within the first-byte deadline and read up to the largest message NATS carries; it is
        checked before anything reaches the client (``embeddings_body``)."""
        assert self._http is not None
        assert self._nc is not None
        s = self._settings
        dispatch = active.dispatch
        body, active.dropped = PROFILES[hoster.profile].prepare(
            dispatch.body, dispatch.upstream_model, 0, dispatch.endpoint
        )
        started = time.monotonic()
        first_byte_s = self._first_byte_s(dispatch)
        limit = min(s.max_attempt_bytes, self._max_payload())
        url = self._urls[hoster.id][EMBEDDINGS]
        raw = bytearray()
        try:
            async with asyncio.timeout(min(first_byte_s, s.max_attempt_duration_s)) as deadline:
                response = await self._send(url, orjson.dumps(body), self._headers(hoster))
                try:
                    if response.status != 200:
                        raise await self._refusal(response)
                    read = response.content.readany
                    while data := await read():
                        raw += data
                        if len(raw) > limit:
                            raise UpstreamFailure(
                                f"response_too_large: the upstream's embeddings are over {limit} bytes"
                            )
                finally:
                    # Back to the pool when the body was read to its end, else the connection is closed.
                    response.release()
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the HTTP client's own timeout (connecting, reading), not the deadline
            raise UpstreamFailure(self._deadline_error([], False, first_byte_s)) from exc
        ttft.append(time.monotonic() - started)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure("invalid_embeddings: the answer is not JSON") from exc
        answer = embeddings_body(doc, dispatch, tally)
        if len(answer) > self._max_payload():
            raise UpstreamFailure("response_too_large: the embeddings do not fit one message; send fewer inputs")
        await self._send_frame(active, frames.COMPLETION, answer)

    def _headers(self, hoster: HosterConfig, accept: str = "application/json") -> dict[str, str]:
        """Headers of a request to ``hoster``: JSON, uncompressed, trace context, its API key if it has one."""
        headers = inject_headers({"content-type": "application/json", "accept": accept, "accept-encoding": "identity"})
        if hoster.api_key is not None:
            headers["authorization"] = f"Bearer {hoster.api_key.get_secret_value()}"
        return headers

    def _first_byte_s(self, dispatch: AttemptDispatch) -> float:
        """How long the upstream has for its first byte: the router's deadline, never past the adapter's own."""
        first_byte_s = self._settings.first_byte_timeout_s
        if dispatch.first_byte_deadline_ms is not None:
            first_byte_s = min(first_byte_s, dispatch.first_byte_deadline_ms / 1000)
        return first_byte_s

    async def _send_chunks(self, active: ActiveAttempt, batch: list[bytes]) -> None:
        """One chunk frame carrying ``batch`` (one chunk per line)."""
        await self._send_frame(active, frames.CHUNK, batch[0] if len(batch) == 1 else b"\n".join(batch))

    async def _send_frame(self, active: ActiveAttempt, kind: int, body: bytes = b"") -> None:
        """The attempt's next frame on its reply subject, numbered in sequence."""
        assert self._nc is not None
        dispatch = active.dispatch
        await self._nc.publish(dispatch.reply_subject, frames.encode(kind, dispatch.attempt, active.seq, body))
        active.seq += 1
        active.last_sent = time.monotonic()

    def _max_payload(self) -> int:
        """The largest frame body NATS carries: the server's max_payload (a hoster's credentials allow no more
        than ``HOSTER_MAX_PAYLOAD``, whatever the server's) less the frame's header."""
        assert self._nc is not None
        max_payload = min(int(self._nc.max_payload or 0), HOSTER_MAX_PAYLOAD)
        return max_payload - FRAME_ROOM if max_payload > FRAME_ROOM else 1 << 20

    def _deadline_error(self, ttft: list[float], too_long: bool, first_byte_s: float) -> str:
        """The routing record's error for an attempt its deadline ended."""
        s = self._settings
        return deadline_error(bool(ttft), too_long, first_byte_s, s.max_attempt_duration_s, s.stall_timeout_s)

    async def _refusal(self, response: aiohttp.ClientResponse) -> UpstreamFailure:
        """The failure for a non-200 answer, from at most ``max_error_body_bytes`` of its body (the rest is
        never read: the caller closes the response)."""
        cap = self._settings.max_error_body_bytes
        head = bytearray()
        if cap:
            read = response.content.readany
            while data := await read():
                head += data[: cap - len(head)]
                if len(head) >= cap:
                    break
        status = response.status
        detail = _error_detail(bytes(head))
        return UpstreamFailure(f"upstream status {status}: {detail}", status, status in CLIENT_ERROR_STATUSES)

    async def _send(self, url: URL, content: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST ``content`` and return the response once its head arrived (the body is read by the caller,
        which releases it). Retried once when the connection fails before an answer began: a pooled
        keep-alive connection the server has just closed fails that way, and nothing was generated yet. A
        read timeout is not retried."""
        assert self._http is not None
        try:
            return await self._http.post(url, data=content, headers=headers, allow_redirects=False)
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise
            return await self._http.post(url, data=content, headers=headers, allow_redirects=False)

    async def _publish_finished(self, router_id: str, event: AttemptFinished) -> None:
        """Report the outcome to the router that dispatched the attempt (a core message: the router holds the
        request's record and settles it; a lost report bills nothing for the attempt)."""
        assert self._nc is not None
        try:
            await self._nc.publish(
                subjects.attempt_finished(event.hoster_id, router_id), event.model_dump_json().encode()
            )
        except Exception as exc:  # a reconnect: the router settles without it
            self._log.warning("attempt report not sent", extra={"request_id": event.request_id, "error": repr(exc)})

    async def _heartbeat_loop(self) -> None:
        assert self._nc is not None
        while True:
            try:
                for heartbeat in self.heartbeats():
                    subject = subjects.hoster_heartbeat(heartbeat.hosters[0].hoster_id)
                    await self._nc.publish(subject, heartbeat.model_dump_json().encode())
            except Exception as exc:  # a missed heartbeat must not end the loop
                self._log.warning("heartbeat not sent", extra={"error": repr(exc)})
            if not self._joined.is_set():
                asyncio.get_running_loop().call_later(JOIN_WAIT_S, self._joined.set)
            await asyncio.sleep(self._settings.heartbeat_interval_s)

    async def _keepalive_loop(self) -> None:
        """Tell the ingress an attempt is alive while its upstream is slow, so it can tell slow from dead."""
        assert self._nc is not None
        interval = self._settings.keepalive_interval_s
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for active in list(self._active.values()):
                if now - active.last_sent >= interval:
                    d = active.dispatch
                    try:
                        await self._nc.publish(d.reply_subject, frames.encode(frames.KEEPALIVE, d.attempt, -1))
                    except Exception as exc:  # one failed publish (a reconnect) must not end the loop
                        self._log.warning("keepalive not sent", extra={"error": repr(exc)})
                    active.last_sent = now


def _error_detail(head: bytes, limit: int = 300) -> str:
    """What an error body says: the OpenAI envelope's message when it is one, else its first characters."""
    try:
        message = orjson.loads(head)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        message = None
    text = message if isinstance(message, str) else head.decode(errors="replace")
    return text[:limit]
