"""Probe requests: a new or idle hoster earns (or loses) trust from evidence before clients depend on it.

While a hoster is new (fewer than ``probe_new_attempts`` attempts observed) or idle (no attempt for
``probe_idle_s``), the router sends it one short, known, unbilled request about every ``probe_interval_s``
(jittered, one at a time per hoster). The adapter reports the attempt like any other, so its outcome, time
to first token and speed feed the stats and trust as real traffic does. The router also reads the answer: a
malformed body, or usage that its text cannot hold, counts as a failure on top and cools the hoster down at
once; so does a probe that gets neither an answer nor a report by its deadline. Nothing is reserved or
settled: no client pays and the hoster earns nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from typing import Any

import orjson
from nats.aio.client import Client

from libs.contracts import frames, subjects
from libs.contracts.common import CHAT
from libs.contracts.routing import AttemptFinished, RouteRequest, RoutingPreferences
from libs.platform.ids import new_request_id
from services.router.dispatcher import Dispatcher
from services.router.service import Candidate
from services.router.settings import RouterSettings
from services.router.stats import HosterStats

PROBE_PROMPT = "Reply with one short sentence about the sea."
PROBE_MAX_TOKENS = 16
# Tokens a chat template may add per message around its text, for the prompt bound below.
TEMPLATE_TOKENS = 32


def probe_due(stats: HosterStats, now: float, new_attempts: int, idle_s: float) -> bool:
    """Whether a hoster should be probed now: new or idle, and not cooling down (a cooling hoster is probed
    back in by real traffic once its cooldown ends)."""
    if stats.cooling(now):
        return False
    return stats.lifetime < new_attempts or now - stats.last_attempt > idle_s


def check_answer(body: bytes, prompt_bytes: int) -> str | None:
    """What is wrong with a probe's answer, or ``None``: it must be one well-formed chat completion whose usage
    its text can hold (a token is at least one byte of text, plus the end token; the prompt cannot have more
    tokens than bytes, plus the template's)."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the answer is not JSON"
    if not isinstance(doc, dict) or doc.get("object") != "chat.completion":
        return "the answer is not a chat.completion"
    choices = doc.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return "the answer does not have exactly one choice"
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content:
        return "the answer has no text"
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return "the answer has no usage"
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return f"the usage is not two counts: {prompt!r}, {completion!r}"
    text_bytes = len(content.encode())
    if completion > min(PROBE_MAX_TOKENS, text_bytes + 1):
        return (
            f"usage claims {completion} completion tokens for {text_bytes} bytes of text, max_tokens {PROBE_MAX_TOKENS}"
        )
    if prompt > prompt_bytes + TEMPLATE_TOKENS:
        return f"usage claims {prompt} prompt tokens for a {prompt_bytes}-byte prompt"
    return None


def answered_tokens(body: bytes) -> int:
    """The completion tokens of a probe's answer that ``check_answer`` passed (held to its text)."""
    usage = orjson.loads(body)["usage"]
    return int(usage["completion_tokens"])


class Prober:
    """Sends the probes of one router replica (see the module's docstring)."""

    def __init__(self, dispatcher: Dispatcher, settings: RouterSettings, logger: logging.Logger) -> None:
        self._dispatcher = dispatcher
        self._settings = settings
        self._log = logger
        self._running: dict[str, asyncio.Task[None]] = {}

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
        request_id = new_request_id()
        body = {
            "model": candidate.offer.model,
            "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "max_tokens": PROBE_MAX_TOKENS,
        }
        route = RouteRequest(
            request_id=request_id,
            reply_subject=subjects.reply_subject(f"probe-{d.router_id}", request_id),
            model=candidate.offer.model,
            stream=False,
            include_usage=False,
            created=int(time.time()),
            routing=RoutingPreferences(),
            body=body,
        )
        answers: asyncio.Queue[frames.Frame] = asyncio.Queue(maxsize=64)

        async def on_frame(msg: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull, ValueError):
                answers.put_nowait(frames.decode(msg.data))

        reply = subjects.offer_subject(route.reply_subject, 1, secrets.token_hex(12))
        subscription = await nc.subscribe(reply, cb=on_frame)
        reported = d.expect_probe(request_id)
        try:
            dispatch = d.attempt_for(route, candidate, 1, len(PROBE_PROMPT), reply)
            started = time.monotonic()
            if await d.offer(dispatch) is None:
                return  # busy or away: it is due again next round
            wait_s = (dispatch.first_byte_deadline_ms or self._settings.first_byte_ceiling_ms) / 1000 + 30
            verdict, answer = await self._answer(answers, reported, wait_s)
            duration_ms = (time.monotonic() - started) * 1000
            if verdict == "failed":
                d.observe_probe(candidate, "failed", duration_ms, 0)
                return
            if verdict == "answered":
                problem = check_answer(answer, len(PROBE_PROMPT.encode()))
            elif reported.done():
                problem = "the attempt was reported a success but no answer came"
            else:
                problem = "neither an answer nor a report by the probe's deadline"
            if problem is not None:
                self._log.warning("probe failed", extra={"hoster_id": candidate.hoster.hoster_id, "problem": problem})
                d.observe_probe_failure(candidate, problem)
            else:
                d.observe_probe(candidate, "succeeded", duration_ms, answered_tokens(answer))
        finally:
            d.forget_probe(request_id)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    @staticmethod
    async def _answer(
        answers: asyncio.Queue[frames.Frame], reported: asyncio.Future[AttemptFinished], wait_s: float
    ) -> tuple[str, bytes]:
        """``answered`` with the completion's body, ``failed`` when the attempt was reported failed with no
        answer, or ``silent`` when nothing decided it within ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    if reported.done() and reported.result().outcome != "succeeded" and answers.empty():
                        return "failed", b""
                    getter: asyncio.Future[Any] = asyncio.ensure_future(answers.get())
                    waiting: set[asyncio.Future[Any]] = {getter} if reported.done() else {getter, reported}
                    try:
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not getter.done():
                            getter.cancel()
                    if getter.done() and not getter.cancelled() and getter.result().kind == frames.COMPLETION:
                        return "answered", getter.result().body
        except TimeoutError:
            return "silent", b""
