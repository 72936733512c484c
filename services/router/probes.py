"""Probe requests: a new or idle hoster earns (or loses) trust from evidence before clients depend on it.

While a hoster is new (fewer than ``probe_new_attempts`` attempts observed) or idle (no attempt for
``probe_idle_s``), the router sends it one unbilled request about every ``probe_interval_s`` (jittered, one
at a time per hoster). A probe is a covert request (``services.router.covert``): its prompt, parameters,
request id and reply subject are drawn as a client's, so a hoster cannot serve probes better than clients.
The router judges it as real traffic is judged (the outcome, its own clock for the time to the first content
and the duration) and also reads the answer: a malformed one, or usage that its text cannot hold, counts as
a failure and cools the hoster down at once; so does a probe that gets neither an answer nor a report by
its deadline. Nothing is reserved or settled: no client pays and the hoster earns nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from typing import Any

from nats.aio.client import Client
from opentelemetry import trace

from libs.contracts import frames
from libs.contracts.common import CHAT, Usage
from libs.contracts.routing import AttemptFinished
from services.router.covert import DEFAULT_PROMPTS, Answer, Judgement, PromptPool, check_answer, covert_request
from services.router.dispatcher import Dispatcher
from services.router.service import Candidate
from services.router.settings import RouterSettings
from services.router.stats import HosterStats

# How long a probe whose stream carried no usage waits for the hoster's report, once the stream ended.
REPORT_WAIT_S = 5.0
TRACER = trace.get_tracer(__name__)


def probe_due(stats: HosterStats, now: float, new_attempts: int, idle_s: float) -> bool:
    """Whether a hoster should be probed now: new or idle, and not cooling down (a cooling hoster is probed
    back in by real traffic once its cooldown ends)."""
    if stats.cooling(now):
        return False
    return stats.lifetime < new_attempts or now - stats.last_attempt > idle_s


class Prober:
    """Sends the probes of one router replica (see the module's docstring)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        settings: RouterSettings,
        logger: logging.Logger,
        rng: random.Random | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._settings = settings
        self._log = logger
        self._running: dict[str, asyncio.Task[None]] = {}
        # Loaded once: a file that is no prompt pool stops the router at start.
        self._prompts = PromptPool.load(settings.probe_prompts_file or DEFAULT_PROMPTS)
        # Unpredictable draws: a hoster that saw enough of them could not tell the next.
        self._rng = rng or random.SystemRandom()

    async def run(self, nc: Client) -> None:
        """Probe whoever is due, about every ``probe_interval_s``, for ever."""
        try:
            while True:
                await asyncio.sleep(self._settings.probe_interval_s * random.uniform(0.8, 1.2))
                try:
                    self.probe_due_hosters(nc)
                except Exception:
                    self._log.exception("probes not sent")
        finally:
            for task in self._running.values():
                task.cancel()

    def probe_due_hosters(self, nc: Client) -> None:
        """Start a probe of every live hoster that is due one and has none running."""
        s, wall = self._settings, time.time()
        for status, adapter_id in self._dispatcher.registry.statuses(time.monotonic()):
            hoster_id = status.hoster_id
            # Probes are chat completions: a hoster serving only embeddings is judged by its clients' requests.
            chat = [o for o in status.models if CHAT in o.endpoints]
            if hoster_id in self._running or not chat:
                continue
            if not probe_due(self._dispatcher.stats.of(hoster_id, wall), wall, s.probe_new_attempts, s.probe_idle_s):
                continue
            offer = min(chat, key=lambda o: (o.input_price + o.output_price, o.model))
            task = asyncio.create_task(self.probe(nc, Candidate(status, offer, adapter_id)))
            self._running[hoster_id] = task
            task.add_done_callback(functools.partial(self._done, hoster_id))

    def _done(self, hoster_id: str, _: asyncio.Task[None]) -> None:
        self._running.pop(hoster_id, None)

    async def probe(self, nc: Client, candidate: Candidate) -> None:
        """Send one probe to ``candidate`` and judge what comes back."""
        d = self._dispatcher
        request = covert_request(
            candidate.offer.model, self._prompts, d.ingresses, self._settings.default_max_tokens, self._rng
        )
        route = request.route
        answer = Answer(route.stream)
        over = asyncio.Event()

        async def on_frame(msg: Any) -> None:
            with contextlib.suppress(ValueError):
                if answer.take(frames.decode(msg.data), time.monotonic()):
                    over.set()

        subscription = await nc.subscribe(request.reply, cb=on_frame)
        reported = d.expect_probe(route.request_id)
        try:
            # A client's dispatch is sent within the span of its route request: with tracing on, a probe's
            # carries a trace context too.
            with TRACER.start_as_current_span("router.probe"):
                dispatch = d.attempt_for(route, candidate, 1, request.prompt_tokens, request.reply)
                started = time.monotonic()
                if await d.offer(dispatch) is None:
                    return  # busy or away: it is due again next round
            wait_s = (dispatch.first_byte_deadline_ms or self._settings.first_byte_ceiling_ms) / 1000 + 30
            verdict = await self._answer(answer, over, reported, wait_s)
            duration_ms = (time.monotonic() - started) * 1000
            if verdict == "failed":
                d.observe_probe(candidate, "failed", duration_ms, 0)
                return
            if verdict == "answered":
                usage = await self._reported_usage(reported, answer, route.include_usage)
                judged = check_answer(request, answer, usage)
            elif reported.done():
                judged = Judgement("the attempt was reported a success but no answer came")
            else:
                judged = Judgement("neither an answer nor a report by the probe's deadline")
            if judged.problem is not None:
                extra = {"hoster_id": candidate.hoster.hoster_id, "problem": judged.problem}
                self._log.warning("probe failed", extra=extra)
                d.observe_probe_failure(candidate, judged.problem)
            else:
                first = judged.first_content
                ttft_ms = (first - started) * 1000 if first is not None else duration_ms
                d.observe_probe(candidate, "succeeded", duration_ms, judged.completion_tokens, ttft_ms)
        finally:
            d.forget_probe(route.request_id)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    @staticmethod
    async def _answer(
        answer: Answer, over: asyncio.Event, reported: asyncio.Future[AttemptFinished], wait_s: float
    ) -> str:
        """``answered`` once the answer is over, ``failed`` when the hoster said the attempt failed (an error
        frame, or a report of anything but a success before the answer was over), or ``silent`` when
        nothing decided it within ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    if answer.failed:
                        return "failed"
                    if over.is_set():
                        return "answered"
                    if reported.done() and reported.result().outcome != "succeeded":
                        return "failed"
                    ended: asyncio.Future[Any] = asyncio.ensure_future(over.wait())
                    waiting: set[asyncio.Future[Any]] = {ended} if reported.done() else {ended, reported}
                    try:
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not ended.done():
                            ended.cancel()
        except TimeoutError:
            return "silent"

    @staticmethod
    async def _reported_usage(
        reported: asyncio.Future[AttemptFinished], answer: Answer, include_usage: bool
    ) -> Usage | None:
        """The usage the hoster reported, for a stream not asked for its usage (its report follows the end
        of the stream: it is waited for, a little); ``None`` otherwise or without a report."""
        if not answer.stream or include_usage:
            return None
        await asyncio.wait({reported}, timeout=REPORT_WAIT_S)
        if not reported.done() or reported.result().outcome != "succeeded":
            return None
        return reported.result().usage
