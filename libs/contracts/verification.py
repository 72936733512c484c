"""Spot checks' messages (``services.router.verification`` judges, ``services.router.spotchecks`` sends): one
judged check, broadcast to every router, and the verdicts shown to clients and operators."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.contracts.common import Contract

VerdictName = Literal["verified", "failed", "unchecked"]
ShapeName = Literal["greedy", "greedy_logprobs", "sampled_logprobs"]


class CheckEvidence(Contract):
    """One judged check: what was compared with whom, what was measured, and whether it passed."""

    at: float = Field(ge=0)
    shape: ShapeName
    reference: str  # the hoster compared with
    passed: bool
    positions: int = Field(ge=0)
    shared: int = Field(ge=0)
    mean_delta: float | None = None
    top_overlap: float | None = None
    problem: str | None = None


class SpotCheckJudged(Contract):
    """router -> every router (``router.spotchecks.judged``, core broadcast): a check of ``hoster_id``
    serving ``model`` was judged; each router folds it into its verdicts."""

    hoster_id: str
    model: str
    evidence: CheckEvidence


class ModelVerification(Contract):
    """A hoster's verdict on one model (``declared``: the quantization it declares for it; ``confirmed``:
    whether a reference of that quantization agreed, ``None`` when nothing says)."""

    model: str
    verdict: VerdictName
    checks: int = 0
    failures: int = 0
    last_checked: float | None = None
    declared: str | None = None
    confirmed: bool | None = None
    evidence: list[CheckEvidence] = Field(default_factory=list)
