"""What a spot check can tell apart: the tiny model's F16 weights (the reference) against the same weights
served again (one thread, two threads, the prompts in another order), in F32, quantized as Q8_0 and Q4_0, and
another model's weights (seed 1), all in llama-cpp-python in-process, greedy with ``logprobs`` and
``top_logprobs: 5`` on the router's covert prompts. ``python -m tests.spotcheck_measure [--max-tokens N]``;
about a minute on one core.

Per candidate and prompt (one check) it reports the greedy shared prefix (tokens until the first that differs,
and its share of the reference's length), the absolute logprob differences of the tokens both top-5 lists hold
over the shared prefix and the first divergent position (the same context in both), and how many of the
reference's top 5 at the first position are in the candidate's; then each check's mean difference against a
few thresholds (the false positive and negative rates of one check), and what ``services.router.verification``'s
``judge`` decides with its thresholds. Last, for each model, whether the reported logprobs are the raw
distribution's: the first position's top 5 of a greedy and of a ``temperature: 0.8`` answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.devstack.tinymodel import WeightType, tiny_model
from services.router.covert import DEFAULT_PROMPTS
from services.router.verification import REFERENCE_TOP_LOGPROBS, CheckPlan, Shape, judge

# Checks beyond the pool's prompts repeat its first ones behind a system message (other contexts, same texts).
CHECKS = 100
SYSTEM = "You are a helpful assistant. Answer briefly."
THRESHOLDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Candidate:
    """A model as a hoster might serve it: its seed, weight type, threads, and whether the prompts come in
    reverse order (another history in the engine's prompt cache)."""

    label: str
    seed: int
    weights: WeightType
    threads: int = 1
    reverse: bool = False
    honest: bool = False


REFERENCE = Candidate("reference f16", 0, "f16")
CANDIDATES = (
    Candidate("f16 again", 0, "f16", honest=True),
    Candidate("f16 2 threads", 0, "f16", threads=2, honest=True),
    Candidate("f16 reversed", 0, "f16", reverse=True, honest=True),
    Candidate("f32", 0, "f32"),
    Candidate("q8_0", 0, "q8_0"),
    Candidate("q4_0", 0, "q4_0"),
    Candidate("f16 seed 1", 1, "f16"),
)


@dataclass
class Run:
    """One model's answers to every conversation (plain JSON), and the seconds each took."""

    answers: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def conversations(count: int = CHECKS) -> list[list[dict[str, str]]]:
    """``count`` conversations from the router's prompt pool: each prompt alone, then again behind ``SYSTEM``."""
    prompts = [json.loads(line) for line in DEFAULT_PROMPTS.read_text().splitlines() if line.strip()]
    plain = [[{"role": "user", "content": prompt}] for prompt in prompts]
    framed = [[{"role": "system", "content": SYSTEM}, *conversation] for conversation in plain]
    return (plain + framed)[:count]


def plain_json(value: Any) -> Any:
    """A completion as an HTTP client would parse it (numpy floats become floats)."""
    return json.loads(json.dumps(value, default=float))


def run(candidate: Candidate, chats: Sequence[list[dict[str, str]]], max_tokens: int, temperature: float) -> Run:
    """``candidate``'s answers to ``chats`` (in its order, returned in the given one) with top-5 logprobs."""
    import llama_cpp

    path = tiny_model(candidate.seed, weights=candidate.weights).gguf
    llm = llama_cpp.Llama(
        model_path=str(path), n_threads=candidate.threads, n_ctx=1024, logits_all=True, seed=7, verbose=False
    )
    order = list(range(len(chats)))[:: -1 if candidate.reverse else 1]
    answers: dict[int, Any] = {}
    seconds: dict[int, float] = {}
    try:
        for index in order:
            started = time.perf_counter()
            answer = llm.create_chat_completion(
                messages=chats[index],  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_tokens,
                logprobs=True,
                top_logprobs=REFERENCE_TOP_LOGPROBS,
                seed=index,
            )
            seconds[index] = time.perf_counter() - started
            answers[index] = plain_json(answer)
    finally:
        llm.close()
    return Run([answers[i] for i in range(len(chats))], [seconds[i] for i in range(len(chats))])


def positions(answer: Any) -> list[tuple[str, dict[str, float]]]:
    """The generated tokens of ``answer`` and the top list at each (token text -> logprob).

    llama-cpp-python keys its top lists by the token's text and adds the chosen token to them, so tokens with
    the same text (every partial UTF-8 byte is ``""``) overwrite one another: those are left out."""
    out = []
    for entry in answer["choices"][0]["logprobs"]["content"]:
        top = {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"] if alt["token"]}
        out.append((entry["token"], top))
    return out


def empty(answer: Any) -> bool:
    """Whether ``answer`` has no generated token (the model's first choice was its end of turn)."""
    return not answer["choices"][0]["logprobs"]["content"]


@dataclass(frozen=True)
class Comparison:
    """One check: the shared greedy prefix, its share of the reference's length, the |Δ| of the logprobs both
    top lists hold over the comparable positions, and the reference's first top 5 found in the candidate's."""

    shared: int
    share: float
    deltas: list[float]
    first_overlap: int

    @property
    def mean_delta(self) -> float | None:
        return statistics.fmean(self.deltas) if self.deltas else None


def compare(reference: Any, candidate: Any) -> Comparison:
    """Compare a candidate's answer with the reference's, position by position until (and including) the
    first token that differs: past it the contexts differ and nothing is comparable."""
    ref, own = positions(reference), positions(candidate)
    shared = 0
    deltas: list[float] = []
    for (ref_token, ref_top), (own_token, own_top) in zip(ref, own, strict=False):
        deltas.extend(abs(ref_top[t] - own_top[t]) for t in ref_top.keys() & own_top.keys())
        if ref_token != own_token:
            break
        shared += 1
    first_overlap = len(ref[0][1].keys() & own[0][1].keys()) if ref and own else 0
    return Comparison(shared, shared / len(ref) if ref else 1.0, deltas, first_overlap)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdicts(chats: Sequence[list[dict[str, str]]], reference: Run, answers: Run, shape: Shape) -> float:
    """The share of checks ``services.router.verification.judge`` passes (``shape``: how the candidate was
    asked), over the checks whose reference answer has tokens."""
    passed = judged = 0
    for chat, ref, own in zip(chats, reference.answers, answers.answers, strict=True):
        if empty(ref):
            continue
        body = {"messages": chat, "logprobs": True, "top_logprobs": REFERENCE_TOP_LOGPROBS}
        plan = CheckPlan(shape, body, body | {"temperature": 0})
        result = judge(plan, own, ref)
        judged += 1
        passed += result is not None and result.passed
    return passed / judged


def report_pairs(
    chats: Sequence[list[dict[str, str]]], reference: Run, runs: dict[Candidate, Run], shape: Shape
) -> None:
    """Per candidate: the prefix, |Δ| and overlap table, then each check's mean |Δ| against ``THRESHOLDS``
    (a check without a comparable token counts as infinite). Checks whose reference answer is empty are left
    out: they compare nothing."""
    kept = [i for i, answer in enumerate(reference.answers) if not empty(answer)]
    print(
        f"\n{len(kept)} checks (of {len(chats)}: the others' reference answer is empty), reference {REFERENCE.label}\n"
    )
    print(
        "candidate        prefix  share  |Δ| mean  median     p95     max  pairs  top5@0"
        "  check mean|Δ| p50/p95/max   judge"
    )
    means: dict[Candidate, list[float]] = {}
    for candidate, answers in runs.items():
        checks = [compare(reference.answers[i], answers.answers[i]) for i in kept]
        deltas = [d for check in checks for d in check.deltas]
        means[candidate] = [check.mean_delta if check.mean_delta is not None else float("inf") for check in checks]
        pooled = (
            f"{statistics.fmean(deltas):9.5f} {statistics.median(deltas):7.5f} {quantile(deltas, 0.95):7.5f} "
            f"{max(deltas):7.5f}"
            if deltas
            else f"{'(none)':>9} {'-':>7} {'-':>7} {'-':>7}"
        )
        print(
            f"{candidate.label:15} {statistics.fmean(c.shared for c in checks):6.1f} "
            f"{statistics.fmean(c.share for c in checks):6.2f} {pooled} "
            f"{statistics.fmean(len(c.deltas) for c in checks):5.1f} "
            f"{statistics.fmean(c.first_overlap for c in checks):7.2f}  "
            f"{quantile(means[candidate], 0.5):.5f}/{quantile(means[candidate], 0.95):.5f}/"
            f"{max(means[candidate]):.5f}  {verdicts(chats, reference, answers, shape):5.0%}"
        )
    print("\nshare of checks whose mean |Δ| exceeds the threshold (honest: false positives; others: 1 - FN)")
    print("candidate       " + "".join(f"{t:>9}" for t in THRESHOLDS))
    for candidate, values in means.items():
        print(
            f"{candidate.label:15} " + "".join(f"{sum(v > t for v in values) / len(values):9.0%}" for t in THRESHOLDS)
        )


def report_temperature(greedy: Run, sampled: Run, label: str) -> None:
    """Whether the logprobs reported at the first position change with the temperature (they should not if
    they are the raw distribution's): how often the greedy top 5 there are all in the sampled answer's list
    (which adds the sampled token to its top 5), and the largest |Δ| of the tokens both list."""
    worst = 0.0
    contained = 0
    pairs = [(r, o) for r, o in zip(greedy.answers, sampled.answers, strict=True) if not empty(r) and not empty(o)]
    for ref, own in pairs:
        ref_top, own_top = positions(ref)[0][1], positions(own)[0][1]
        contained += ref_top.keys() <= own_top.keys()
        worst = max([worst, *(abs(ref_top[t] - own_top[t]) for t in ref_top.keys() & own_top.keys())])
    print(
        f"{label:15} greedy top 5 at position 0 all in the sampled list: {contained}/{len(pairs)}, max |Δ| {worst:.6f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--checks", type=int, default=CHECKS)
    args = parser.parse_args(argv)
    chats = conversations(args.checks)
    reference = run(REFERENCE, chats, args.max_tokens, 0.0)
    runs = {candidate: run(candidate, chats, args.max_tokens, 0.0) for candidate in CANDIDATES}
    report_pairs(chats, reference, runs, "greedy_logprobs")

    print("\nsampled candidate (temperature 0.8) against the greedy reference")
    sampled = {c: run(c, chats, args.max_tokens, 0.8) for c in CANDIDATES if not c.reverse and c.threads == 1}
    report_pairs(chats, reference, sampled, "sampled_logprobs")
    print("\nare the reported logprobs the raw distribution's? greedy vs temperature 0.8, same model")
    for candidate, answers in sampled.items():
        report_temperature(runs[candidate], answers, candidate.label)

    print("\nseconds per answer (mean, p95); a check is one reference answer plus one candidate answer")
    for candidate, answers in {REFERENCE: reference, **runs}.items():
        print(f"{candidate.label:15} {statistics.fmean(answers.seconds):.4f} {quantile(answers.seconds, 0.95):.4f}")
    print(f"model files: {Path(tiny_model(0, weights='f16').gguf).parent.parent}")


if __name__ == "__main__":
    main()
