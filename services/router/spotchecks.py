"""Spot checks as the network sends them: requests of the network's own account through the public API, to one
hoster of a registered model and to its reference, compared by ``services.router.verification``.

A check is a client's request in every way a hoster can see: it comes through an ingress like any other
(the operator's API key of an account it funds, ``CS_ROUTER_SPOT_CHECK_API_KEY``), is billed to that account
and paid to the hoster like any request, its conversation is drawn from a prompt pool (the operator's
``CS_ROUTER_SPOT_CHECK_PROMPTS_FILE``, else the probes', else the one shipped) with a client's parameters,
and checks arrive at random (exponential gaps, ``CS_ROUTER_SPOT_CHECKS_PER_HOUR`` per hoster and model on
average). The hoster is pinned with ``allow_hosters``, which the ingress strips before any hoster sees the
body. The reference is a hoster the operator designated for the model (``computeshare model reference``) or,
where there is none, up to ``PEERS`` other hosters of the model: a check then passes when it agrees with at
least half of them. Each judged check is broadcast to every router (``router.spotchecks.judged``).

Only the router replicas given an API key send checks (one is enough: ``k8s`` runs it in one replica); every
replica folds every check. A client's own prompt is never sent anywhere for checking, and no client request is
evidence.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx
import orjson
from nats.aio.client import Client

from libs.contracts import subjects
from libs.contracts.common import CHAT
from libs.contracts.verification import SpotCheckJudged
from services.router.covert import DEFAULT_PROMPTS, PromptPool
from services.router.dispatcher import Dispatcher
from services.router.settings import RouterSettings
from services.router.verification import FAILED, CheckPlan, CheckResult, draw_check, evidence_of, judge

# Hosters of a model asked as its reference when the operator designated none.
PEERS = 2
# The header naming who served a request: a check answered by anyone else is no evidence.
SERVED_BY = "x-computeshare-hoster"


def pairs_due(
    due: dict[tuple[str, str], float], live: set[tuple[str, str]], now: float, per_hour: float, rng: random.Random
) -> list[tuple[str, str]]:
    """The (hoster, model) pairs whose next check time has come, each given its next (an exponential gap of
    mean ``3600 / per_hour`` s); a pair newly live gets its first the same way; pairs gone are forgotten."""
    for gone in set(due) - live:
        del due[gone]
    out = []
    for pair in sorted(live):
        if pair not in due:
            due[pair] = now + rng.expovariate(per_hour / 3600)
        elif due[pair] <= now:
            out.append(pair)
            due[pair] = now + rng.expovariate(per_hour / 3600)
    return out


def combined(results: list[CheckResult]) -> CheckResult | None:
    """Peers' verdicts on one answer: passed when at least half of them agree with it (the first passing
    comparison stands for it), else the first failing one; ``None`` when no comparison said anything."""
    if not results:
        return None
    passing = [r for r in results if r.passed]
    if 2 * len(passing) >= len(results):
        return passing[0]
    return next(r for r in results if not r.passed)


class SpotChecker:
    """Sends one router's spot checks (see the module's docstring)."""

    def __init__(self, dispatcher: Dispatcher, settings: RouterSettings, logger: logging.Logger,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        assert settings.spot_check_api_base
        assert settings.spot_check_api_key is not None
        self._dispatcher = dispatcher
        self._settings = settings
        self._log = logger
        self._rng = rng or random.SystemRandom()
        path = settings.spot_check_prompts_file or settings.probe_prompts_file or DEFAULT_PROMPTS
        self._prompts = PromptPool.load(path)
        self._due: dict[tuple[str, str], float] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.spot_check_concurrency)
        self._http = httpx.AsyncClient(
            base_url=settings.spot_check_api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {settings.spot_check_api_key.get_secret_value()}"},
            timeout=settings.spot_check_timeout_s,
        )

    async def run(self, nc: Client) -> None:
        """Start the checks that are due, every ``spot_check_tick_s``, for ever."""
        try:
            while True:
                await asyncio.sleep(self._settings.spot_check_tick_s)
                try:
                    await self.start_due(nc)
                except Exception:
                    self._log.exception("spot checks not sent")
        finally:
            for task in self._running:
                task.cancel()
            await self._http.aclose()

    def live_pairs(self, registered: frozenset[str]) -> set[tuple[str, str]]:
        """Every (hoster, registered model) served on chat completions now, its references left out."""
        v = self._dispatcher.verifications
        return {
            (c.hoster.hoster_id, c.offer.model)
            for c in self._dispatcher.registry.live(time.monotonic())
            if c.offer.model in registered and CHAT in c.offer.endpoints
            and not v.is_reference(c.hoster.hoster_id, c.offer.model)
        }  # fmt: skip

    def references_for(self, hoster_id: str, model: str) -> list[str]:
        """Whom a check of ``hoster_id`` on ``model`` is compared with: one live designated reference, else up
        to ``PEERS`` other live hosters of the model not failed on it."""
        d, wall = self._dispatcher, time.time()
        serving = sorted({c.hoster.hoster_id for c in d.registry.live(time.monotonic())
                          if c.offer.model == model and CHAT in c.offer.endpoints})  # fmt: skip
        references = [h for h in serving if d.verifications.is_reference(h, model)]
        if references:
            return [self._rng.choice(references)]
        if d.verifications.has_reference(model):
            return []  # its reference is away: a peer's word is not the reference's
        peers = [h for h in serving if h != hoster_id and d.verifications.of(h, model, wall) != FAILED]
        return self._rng.sample(peers, min(PEERS, len(peers)))

    async def start_due(self, nc: Client) -> None:
        registered = await self._dispatcher.registered_models()
        rate = self._settings.spot_checks_per_hour
        for hoster_id, model in pairs_due(self._due, self.live_pairs(registered), time.time(), rate, self._rng):
            references = self.references_for(hoster_id, model)
            if not references:
                continue
            task = asyncio.create_task(self.check(nc, hoster_id, model, references))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def check(self, nc: Client, hoster_id: str, model: str, references: list[str]) -> None:
        """One check of ``hoster_id`` on ``model`` against ``references``; its judgement broadcast."""
        async with self._slots:
            plan = draw_check(model, self._prompts, self._rng, max_tokens=self._settings.spot_check_max_tokens)
            answer, *theirs = await asyncio.gather(
                self.ask(plan.body, hoster_id), *(self.ask(plan.reference_body, r) for r in references)
            )
        if answer is None:
            return  # not served (busy, away, or by someone else): the hoster's reliability is judged elsewhere
        judged = [(r, result) for r, reply in zip(references, theirs, strict=True)
                  if reply is not None and (result := judge(plan, answer, reply)) is not None]  # fmt: skip
        result = combined([r for _, r in judged])
        if result is None:
            return
        reference = ",".join(r for r, _ in judged)
        event = SpotCheckJudged(hoster_id=hoster_id, model=model, evidence=evidence_of(result, reference, time.time()))
        self._log.info("spot check judged", extra=self._log_fields(plan, event))
        await nc.publish(subjects.SPOT_CHECK_JUDGED, event.model_dump_json().encode())

    async def ask(self, body: dict[str, Any], hoster_id: str) -> Any:
        """``body`` as a chat completion served by ``hoster_id`` alone; its answer, or ``None``."""
        try:
            reply = await self._http.post(
                "/chat/completions", content=orjson.dumps({**body, "allow_hosters": [hoster_id]}),
                headers={"content-type": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            self._log.warning("spot check request failed", extra={"hoster_id": hoster_id, "error": repr(exc)})
            return None
        if reply.status_code != 200 or reply.headers.get(SERVED_BY) != hoster_id:
            return None
        try:
            return orjson.loads(reply.content)
        except orjson.JSONDecodeError:
            return None

    @staticmethod
    def _log_fields(plan: CheckPlan, event: SpotCheckJudged) -> dict[str, Any]:
        e = event.evidence
        return {"hoster_id": event.hoster_id, "model": event.model, "shape": plan.shape, "passed": e.passed,
                "positions": e.positions, "mean_delta": e.mean_delta, "problem": e.problem}  # fmt: skip
