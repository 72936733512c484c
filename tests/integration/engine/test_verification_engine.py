"""Spot checks' judge on real llama.cpp answers (in-process): an honest hoster (the registered F16 weights, on
two threads where the reference runs on one) passes 1,000 checks drawn as the router draws them and is never
failed; other weights and a 4-bit quantization are failed within a few."""

from __future__ import annotations

import random

import pytest

from services.router.covert import PromptPool
from services.router.verification import FAILED, VERIFIED
from tests.verification_runs import OPERATOR_PROMPTS, Hoster, Reference, engines, run_checks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

HONEST_CHECKS = 1000


def test_an_honest_hoster_passes_a_thousand_checks_and_dishonest_weights_are_failed_within_a_few() -> None:
    pool = PromptPool.load(OPERATOR_PROMPTS)
    rng = random.Random(2026)
    with engines((0, "f16", 1), (0, "f16", 2), (0, "q4_0", 1), (1, "f16", 1)) as (ref, honest, q4, other):
        reference = Reference(ref)
        run = run_checks(Hoster("honest", honest), reference, pool, rng, HONEST_CHECKS)
        said = [r for r in run.results if r is not None]
        assert len(said) > 0.9 * HONEST_CHECKS
        failing = [r for r in said if not r.passed]
        assert failing == []
        assert run.failed_at is None
        assert run.verdict.decided == VERIFIED
        for name, engine in (("q4", q4), ("other", other)):
            caught = run_checks(Hoster(name, engine), reference, pool, rng, 20, stop_when_failed=True)
            assert caught.verdict.decided == FAILED, (name, caught.results)
            assert caught.failed_at is not None
            assert caught.failed_at <= 6
