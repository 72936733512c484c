"""Spot checks: did a hoster serve the model it claims? The pure part (no I/O): what a check sends, how an
answer is compared with the reference's, and the verdict a hoster's checks add up to.

A check sends the checked hoster a request drawn as a client's (a conversation of the prompt pool, a client's
completion limit) in one of three shapes, drawn per check (``SHAPES``), each a request clients send:

- ``greedy``: ``temperature: 0``, no logprobs: its text is compared with the reference's greedy tokens;
- ``greedy_logprobs``: ``temperature: 0`` with ``logprobs`` and ``top_logprobs``;
- ``sampled_logprobs``: a client's temperature (or none) with ``logprobs`` and ``top_logprobs``.

The reference (a hoster the operator designated for the model, or another hoster of the model when none is)
gets the same conversation greedily with ``logprobs``. Engines are not bit-reproducible across hardware, so
``judge`` compares only what both computed from the same context, the positions of the shared prefix and the
first position where the tokens part (LOGIC's comparison):

- the tokens: at the first position where a greedy answer leaves the reference's tokens, the hoster's token
  must be one the reference nearly tied with its own (within ``TIE_MARGIN`` of its best logprob);
- the logprobs, where the hoster sent them: over those positions, the mean absolute difference between the
  logprobs both gave the same tokens (``MAX_MEAN_DELTA``), and the share of the reference's top tokens the
  hoster also ranked in its own top list (``MIN_TOP_OVERLAP``).

A check passes or fails (``CheckResult``); ``Verdict`` adds a hoster's checks of one model up with Wald's
sequential probability ratio test (an honest hoster fails a check with probability at most ``HONEST_FAIL``,
a dishonest one at least ``DISHONEST_FAIL``): ``failed`` once the evidence says dishonest with error
``ALPHA``, ``verified`` once it says honest with error ``BETA``, ``unchecked`` before either or once its
last check is older than ``VERDICT_MAX_AGE_S``. README, "Verification", says how the thresholds were chosen.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libs.contracts.verification import CheckEvidence, ModelVerification, ShapeName, VerdictName

if TYPE_CHECKING:  # covert imports the router's service module, which imports this one
    from services.router.covert import PromptPool

Shape = ShapeName
VERIFIED: VerdictName = "verified"
FAILED: VerdictName = "failed"
UNCHECKED: VerdictName = "unchecked"

# The shapes of a check and how often each is drawn.
SHAPES: tuple[tuple[Shape, float], ...] = (("greedy", 0.3), ("greedy_logprobs", 0.3), ("sampled_logprobs", 0.4))
# The reference's completion limit: the comparison needs a few dozen positions, not a long answer (the checked
# hoster gets a client's limit, ``COMPLETION_LIMITS`` up to the router's ``spot_check_max_tokens``).
REFERENCE_MAX_TOKENS = 64
TOP_LOGPROBS = (3, 5, 5)
# A sampled check's temperature: as clients set it (``None``: the field left out, the engine's default).
SAMPLED_TEMPERATURES: tuple[float | None, ...] = (None, 0.2, 0.5, 0.7, 0.7, 0.8, 1.0)
# The reference is asked this many top logprobs whatever the check asked the hoster.
REFERENCE_TOP_LOGPROBS = 5

# Decision thresholds of one check (README, "Verification": measured on the tiny models, honest vs Q8_0,
# Q4_0 and other weights).
TIE_MARGIN = 0.05
MAX_MEAN_DELTA = 0.01
MIN_TOP_OVERLAP = 0.6

# The sequential test over a hoster's checks of one model.
HONEST_FAIL = 0.05
DISHONEST_FAIL = 0.5
ALPHA = 0.001  # an honest hoster called failed
BETA = 0.01  # a dishonest one called verified
FAIL_STEP = math.log(DISHONEST_FAIL / HONEST_FAIL)
PASS_STEP = math.log((1 - DISHONEST_FAIL) / (1 - HONEST_FAIL))
FAILED_AT = math.log((1 - BETA) / ALPHA)
VERIFIED_AT = math.log(BETA / (1 - ALPHA))
VERDICT_MAX_AGE_S = 86_400.0
# The checks kept per hoster and model as evidence (shown on the hoster's page).
EVIDENCE_KEPT = 20


@dataclass(frozen=True)
class CheckPlan:
    """One check: the body the checked hoster gets and the body the reference gets (same conversation)."""

    shape: Shape
    body: dict[str, Any]
    reference_body: dict[str, Any]


def draw_shape(rng: random.Random) -> Shape:
    roll, total = rng.random(), 0.0
    for shape, share in SHAPES:
        total += share
        if roll < total:
            return shape
    return SHAPES[-1][0]


def draw_check(
    model: str, pool: PromptPool, rng: random.Random, shape: Shape | None = None, max_tokens: int = 512
) -> CheckPlan:
    """A check of ``model``: a conversation of ``pool``, a client's completion limit (up to ``max_tokens``)
    and the parameters of ``shape`` (drawn when ``None``)."""
    from services.router.covert import COMPLETION_LIMITS  # here: covert imports the module that imports this

    shape = shape or draw_shape(rng)
    messages = pool.draw(rng)
    limit = rng.choice([n for n in COMPLETION_LIMITS if n <= max_tokens] or [max_tokens])
    body: dict[str, Any] = {"model": model, "messages": messages}
    body["max_tokens" if rng.random() < 0.8 else "max_completion_tokens"] = limit
    if shape == "sampled_logprobs":
        temperature = rng.choice(SAMPLED_TEMPERATURES)
        if temperature is not None:
            body["temperature"] = temperature
    else:
        body["temperature"] = rng.choice((0, 0.0))
    if shape != "greedy":
        body["logprobs"] = True
        body["top_logprobs"] = rng.choice(TOP_LOGPROBS)
    reference = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": min(limit, REFERENCE_MAX_TOKENS),
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": REFERENCE_TOP_LOGPROBS,
    }
    return CheckPlan(shape, body, reference)


@dataclass(frozen=True)
class Position:
    """One generated token: its bytes, its logprob, and the top alternatives (bytes -> logprob) at its place."""

    token: bytes
    logprob: float
    top: dict[bytes, float]

    @property
    def best(self) -> float:
        return max([self.logprob, *self.top.values()])


def _token_bytes(entry: dict[str, Any]) -> bytes | None:
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    token = entry.get("token")
    return token.encode() if isinstance(token, str) else None


def _logprob(entry: dict[str, Any]) -> float | None:
    value = entry.get("logprob")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value > 0:
        return None
    return float(value)


def positions_of(completion: Any) -> list[Position] | None:
    """The generated tokens of a chat completion's first choice with their logprobs; ``None`` when it carries
    none, or anything in them is not a token with a finite logprob of at most 0."""
    try:
        content = completion["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, list) or not content:
        return None
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            return None
        token, logprob = _token_bytes(entry), _logprob(entry)
        if token is None or logprob is None:
            return None
        top: dict[bytes, float] = {}
        seen: set[bytes] = set()
        ambiguous: set[bytes] = {b""}
        for alternative in entry.get("top_logprobs") or []:
            if not isinstance(alternative, dict):
                return None
            alt_token, alt_logprob = _token_bytes(alternative), _logprob(alternative)
            if alt_token is None or alt_logprob is None:
                return None
            if alt_token in seen:
                ambiguous.add(alt_token)
            seen.add(alt_token)
            top.setdefault(alt_token, alt_logprob)
        # Tokens told apart by neither bytes nor text (llama.cpp names every partial UTF-8 byte "" and keys its
        # top list by text) are compared by nobody.
        for name in ambiguous:
            top.pop(name, None)
        out.append(Position(token, logprob, top))
    return out


def text_of(completion: Any) -> str | None:
    """A chat completion's first choice's text (``None`` when it has none)."""
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


@dataclass(frozen=True)
class CheckResult:
    """What one check measured and whether it passed (``problem`` says why not; ``None`` when it passed).

    ``positions``: positions compared (same context for both); ``shared``: leading tokens both chose;
    ``mean_delta``: mean absolute logprob difference over the tokens both ranked (``None`` without the
    hoster's logprobs); ``top_overlap``: share of the reference's top tokens in the hoster's top lists."""

    shape: Shape
    positions: int
    shared: int
    mean_delta: float | None
    top_overlap: float | None
    problem: str | None

    @property
    def passed(self) -> bool:
        return self.problem is None


def _near_tie(reference: Position, token: bytes) -> bool:
    """Whether the reference ranked ``token`` within ``TIE_MARGIN`` of its best at that position."""
    ranked = {reference.token: reference.logprob, **reference.top}
    logprob = ranked.get(token)
    return logprob is not None and reference.best - logprob <= TIE_MARGIN


def judge(plan: CheckPlan, answer: Any, reference: Any) -> CheckResult | None:
    """Compare the hoster's ``answer`` with the reference's (both chat completions as JSON); ``None`` when
    the reference's answer carries no usable logprobs (the check says nothing of the hoster)."""
    ref = positions_of(reference)
    if ref is None:
        return None
    if plan.shape == "greedy":
        return _judge_text(plan, text_of(answer), ref)
    mine = positions_of(answer)
    if mine is None and text_of(answer) == "":
        return None  # it ended at once (a sampled end token): no position to compare
    if mine is None:
        return CheckResult(plan.shape, 0, 0, None, None, "no logprobs came with an answer that asked for them")
    deltas: list[float] = []
    overlaps: list[float] = []
    shared = compared = 0
    problem: str | None = None
    for own, theirs in zip(mine, ref, strict=False):
        if not own.token or not theirs.token:
            break  # a token without bytes or text (a partial character): which one it is, nobody can say
        compared += 1
        own_ranked = {own.token: own.logprob, **own.top}
        ref_ranked = {theirs.token: theirs.logprob, **theirs.top}
        deltas.extend(abs(own_ranked[t] - ref_ranked[t]) for t in own_ranked.keys() & ref_ranked.keys())
        if own.top and theirs.top:
            wanted = list(theirs.top)[: len(own.top)]
            overlaps.append(sum(t in own_ranked for t in wanted) / len(wanted))
        if own.token != theirs.token:
            if plan.shape == "greedy_logprobs" and not _near_tie(theirs, own.token):
                problem = f"greedy token {compared} is one the reference did not rank near its best"
            break  # the contexts part here: nothing after is comparable
        shared += 1
    if compared == 0 and problem is None:
        return None  # nothing both computed could be compared: the check says nothing
    mean_delta = sum(deltas) / len(deltas) if deltas else None
    top_overlap = sum(overlaps) / len(overlaps) if overlaps else None
    if problem is None and mean_delta is None:
        problem = "no token both ranked"
    elif problem is None and mean_delta is not None and mean_delta > MAX_MEAN_DELTA:
        problem = f"logprobs differ from the reference's by {mean_delta:.4f} on average"
    elif problem is None and top_overlap is not None and top_overlap < MIN_TOP_OVERLAP:
        problem = f"only {top_overlap:.0%} of the reference's top tokens are among the hoster's"
    return CheckResult(plan.shape, compared, shared, mean_delta, top_overlap, problem)


def _judge_text(plan: CheckPlan, text: str | None, ref: list[Position]) -> CheckResult | None:
    """A greedy answer without logprobs: its text must follow the reference's tokens, and where it leaves
    them, go on with a token the reference nearly tied with its own."""
    if not text:
        return CheckResult(plan.shape, 0, 0, None, None, "the answer has no text")
    rest = text.encode()
    shared = 0
    for position in ref:
        if not position.token:
            break  # a partial character without bytes: where the answer's text stands is unknown from here
        if rest.startswith(position.token):
            rest = rest[len(position.token) :]
            shared += 1
            continue
        if not rest:
            break  # the answer ended here (its end token, or its limit): nothing more to compare
        ranked = {position.token: position.logprob, **position.top}
        if not any(token and rest.startswith(token) and _near_tie(position, token) for token in ranked):
            problem = f"greedy token {shared + 1} is one the reference did not rank near its best"
            return CheckResult(plan.shape, shared + 1, shared, None, None, problem)
        return CheckResult(plan.shape, shared + 1, shared, None, None, None)
    if not shared:
        return None  # the reference's first token is a partial character: nothing to compare
    return CheckResult(plan.shape, shared, shared, None, None, None)


@dataclass
class Verdict:
    """A hoster's checks of one model, added up (see the module's docstring)."""

    llr: float = 0.0
    decided: VerdictName = UNCHECKED
    checks: int = 0
    failures: int = 0
    last_at: float = 0.0
    evidence: deque[CheckEvidence] = field(default_factory=lambda: deque(maxlen=EVIDENCE_KEPT))

    def fold(self, evidence: CheckEvidence) -> VerdictName:
        """Fold one check in; the verdict after it."""
        self.checks += 1
        self.failures += not evidence.passed
        self.last_at = max(self.last_at, evidence.at)
        self.evidence.append(evidence)
        self.llr = min(FAILED_AT, max(VERIFIED_AT, self.llr + (PASS_STEP if evidence.passed else FAIL_STEP)))
        if self.llr >= FAILED_AT:
            self.decided = FAILED
        elif self.llr <= VERIFIED_AT:
            self.decided = VERIFIED
        return self.decided

    def now(self, wall: float) -> VerdictName:
        """The verdict at wall time ``wall``: the last decision, unless its last check is too old."""
        if self.decided == VERIFIED and wall - self.last_at > VERDICT_MAX_AGE_S:
            return UNCHECKED
        return self.decided


def evidence_of(result: CheckResult, reference: str, at: float) -> CheckEvidence:
    """A judged check as it is broadcast and kept."""
    return CheckEvidence(
        at=at,
        shape=result.shape,
        reference=reference,
        passed=result.passed,
        positions=result.positions,
        shared=result.shared,
        mean_delta=None if result.mean_delta is None else round(result.mean_delta, 6),
        top_overlap=None if result.top_overlap is None else round(result.top_overlap, 4),
        problem=result.problem,
    )


class Verifications:
    """Every hoster's verdict per model as this router folded the checks (every router folds every judged
    check, so replicas agree), and each registered model's reference hosters (verified by designation)."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        self.references: dict[str, frozenset[str]] = {}
        self._dirty: set[tuple[str, str]] = set()

    def fold(self, hoster_id: str, model: str, evidence: CheckEvidence) -> tuple[VerdictName, VerdictName]:
        """Fold one judged check in: the verdict before it and after."""
        verdict = self.verdicts.setdefault((hoster_id, model), Verdict())
        before = verdict.decided
        after = verdict.fold(evidence)
        self._dirty.add((hoster_id, model))
        return before, after

    def is_reference(self, hoster_id: str, model: str) -> bool:
        return hoster_id in self.references.get(model, frozenset())

    def has_reference(self, model: str) -> bool:
        return bool(self.references.get(model))

    def of(self, hoster_id: str, model: str, wall: float) -> VerdictName:
        """``hoster_id``'s verdict on ``model`` now (a reference hoster is verified by designation)."""
        if self.is_reference(hoster_id, model):
            return VERIFIED
        verdict = self.verdicts.get((hoster_id, model))
        return verdict.now(wall) if verdict is not None else UNCHECKED

    def failed_models(self, hoster_id: str, wall: float) -> list[str]:
        """The models ``hoster_id`` is failed on now."""
        return sorted(m for (h, m), v in self.verdicts.items() if h == hoster_id and v.now(wall) == FAILED)

    def report(self, hoster_id: str, model: str, wall: float, declared: str | None,
               reference_quantizations: frozenset[str]) -> ModelVerification:  # fmt: skip
        """The verdict with its evidence, as the hoster's page shows it; ``confirmed`` says whether a declared
        quantization was borne out by a reference declaring the same (``None`` when none does)."""
        verdict = self.verdicts.get((hoster_id, model))
        name = self.of(hoster_id, model, wall)
        confirmed = None
        if declared is not None and declared in reference_quantizations and name != UNCHECKED:
            confirmed = name == VERIFIED
        return ModelVerification(
            model=model,
            verdict=name,
            checks=verdict.checks if verdict else 0,
            failures=verdict.failures if verdict else 0,
            last_checked=verdict.last_at if verdict and verdict.checks else None,
            declared=declared,
            confirmed=confirmed,
            evidence=list(verdict.evidence) if verdict else [],
        )

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        """The stored form of every verdict changed since the last call, by store key (``hoster|model``)."""
        dirty, self._dirty = self._dirty, set()
        out = {}
        for hoster_id, model in dirty:
            v = self.verdicts[(hoster_id, model)]
            out[f"{hoster_id}|{model}"] = {
                "hoster_id": hoster_id, "model": model, "llr": v.llr, "decided": v.decided, "checks": v.checks,
                "failures": v.failures, "last_at": v.last_at, "evidence": [e.model_dump() for e in v.evidence],
            }  # fmt: skip
        return out

    def load(self, record: dict[str, Any]) -> bool:
        """Take back one stored verdict; whether it was one (a record unlike what this writes is skipped)."""
        try:
            hoster_id, model = record["hoster_id"], record["model"]
            llr, decided = float(record["llr"]), record["decided"]
            checks, failures, last_at = int(record["checks"]), int(record["failures"]), float(record["last_at"])
            evidence = [CheckEvidence.model_validate(e) for e in record["evidence"]][-EVIDENCE_KEPT:]
        except (KeyError, TypeError, ValueError):
            return False
        if not (isinstance(hoster_id, str) and isinstance(model, str) and decided in (VERIFIED, FAILED, UNCHECKED)):
            return False
        if not (math.isfinite(llr) and math.isfinite(last_at)):
            return False
        verdict = Verdict(min(FAILED_AT, max(VERIFIED_AT, llr)), decided, checks, failures, last_at)
        verdict.evidence.extend(evidence)
        self.verdicts[(hoster_id, model)] = verdict
        return True
