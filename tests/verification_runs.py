"""Spot checks run in-process against llama.cpp (llama-cpp-python), for the test of 1,000 honest checks and the
verification benchmark: the router's own ``draw_check``, ``judge`` and ``Verdict`` on real answers of the tiny
models, without the network between (the end-to-end test, ``tests/e2e/test_spot_checks.py``, runs them through
it).

A hoster here is one engine or two (the claimed weights and a substitute) and, for two, the rule of the
switching upstream (``tests/e2e/switching_upstream.py``) that picks one per request; checks come at the
times a router draws them (exponential gaps), which the rules that look at timing see.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.devstack.tinymodel import WeightType, tiny_model
from services.router.covert import PromptPool
from services.router.verification import FAILED, CheckPlan, CheckResult, Verdict, draw_check, evidence_of, judge
from tests.e2e.switching_upstream import Guesser

OPERATOR_PROMPTS = Path(__file__).resolve().parent / "data" / "operator_prompts.jsonl"
MODEL = "demo-model"
# Completion limits up to this (the end-to-end test's CS_ROUTER_SPOT_CHECK_MAX_TOKENS).
MAX_TOKENS = 64


class Engine:
    """One llama.cpp model in-process (``logits_all``: llama-cpp-python gives logprobs only with it)."""

    def __init__(self, seed: int, weights: WeightType, threads: int = 1) -> None:
        import llama_cpp

        self.label = f"seed {seed} {weights} ({threads} thread{'s' if threads > 1 else ''})"
        path = tiny_model(seed, weights=weights).gguf
        self._llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_ctx=1024, logits_all=True,
                                    seed=random.randrange(1 << 30), verbose=False)  # fmt: skip

    def answer(self, body: dict[str, Any]) -> Any:
        """A chat completion for ``body`` (a check's body, as a hoster's server receives it) as plain JSON."""
        options: dict[str, Any] = {"max_tokens": body.get("max_tokens", body.get("max_completion_tokens"))}
        for name in ("temperature", "top_p", "logprobs", "top_logprobs"):
            if name in body:
                options[name] = body[name]
        answer = self._llm.create_chat_completion(messages=body["messages"], **options)
        return _plain(answer)

    def close(self) -> None:
        self._llm.close()


def _plain(value: Any) -> Any:
    """numpy floats and the like as the JSON a server would send."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, int | str | bool) or value is None:
        return value
    return float(value)


@dataclass
class Hoster:
    """A hoster of ``MODEL``: the engine it serves, or a rule choosing the claimed weights (``real``) or the
    substitute per request."""

    name: str
    real: Engine
    substitute: Engine | None = None
    rule: str | None = None
    guesser: Guesser = field(default_factory=Guesser)

    def answer(self, body: dict[str, Any], now: float) -> Any:
        if self.substitute is None or self.rule is None or self.guesser.real(self.rule, body, now):
            return self.real.answer(body)
        return self.substitute.answer(body)


class Reference:
    """The reference's answers, kept per body: greedy, so the same body is the same answer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._answers: dict[str, Any] = {}

    def answer(self, plan: CheckPlan) -> Any:
        key = repr(sorted(plan.reference_body.items()))
        if key not in self._answers:
            self._answers[key] = self.engine.answer(plan.reference_body)
        return self._answers[key]


@dataclass
class Checks:
    """A run of checks of one hoster: each check's result (``None``: it said nothing), and the verdict."""

    results: list[CheckResult | None] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    failed_at: int | None = None  # the check that made it failed

    @property
    def failures(self) -> int:
        return sum(1 for r in self.results if r is not None and not r.passed)


def run_checks(
    hoster: Hoster,
    reference: Reference,
    pool: PromptPool,
    rng: random.Random,
    checks: int,
    per_hour: float = 1200.0,
    stop_when_failed: bool = False,
) -> Checks:
    """``checks`` checks of ``hoster`` against ``reference``, arriving ``per_hour`` on average."""
    out = Checks()
    now = 0.0
    for number in range(1, checks + 1):
        now += rng.expovariate(per_hour / 3600)
        plan = draw_check(MODEL, pool, rng, max_tokens=MAX_TOKENS)
        result = judge(plan, hoster.answer(plan.body, now), reference.answer(plan))
        out.results.append(result)
        if result is None:
            continue
        if out.verdict.fold(evidence_of(result, "reference", now)) == FAILED and out.failed_at is None:
            out.failed_at = number
            if stop_when_failed:
                break
    return out


@contextmanager
def engines(*specs: tuple[int, WeightType, int]) -> Iterator[list[Engine]]:
    """Engines for ``(seed, weights, threads)`` specs, closed afterwards."""
    made: list[Engine] = []
    try:
        for seed, weights, threads in specs:
            made.append(Engine(seed, weights, threads))
        yield made
    finally:
        for engine in made:
            engine.close()
