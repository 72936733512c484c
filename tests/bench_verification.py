"""How well spot checks catch a hoster serving other weights than it claims: ``make bench-verification``
(``python -m tests.bench_verification [--honest N] [--runs N]``), a few minutes on this machine.

Against the reference (the tiny model's F16 weights, one thread), with the router's own ``draw_check``,
``judge`` and ``Verdict`` on real llama.cpp answers (in-process, ``tests.verification_runs``), conversations
from the operator's pool: an honest hoster (the same F16 weights on two threads) over ``--honest`` checks (the
false positives), and each dishonest one over ``--runs`` runs of checks until it is failed (at most 200): the
share of its checks that failed and how many checks it took to be failed (median, 90th percentile, most)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence

from services.router.covert import PromptPool
from tests.verification_runs import OPERATOR_PROMPTS, Hoster, Reference, engines, run_checks

MOST_CHECKS = 200


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--honest", type=int, default=1000, help="checks of the honest hoster")
    parser.add_argument("--runs", type=int, default=20, help="runs of checks of each dishonest hoster")
    args = parser.parse_args(argv)
    pool = PromptPool.load(OPERATOR_PROMPTS)
    rng = random.Random(11)
    started = time.perf_counter()
    with engines((0, "f16", 1), (0, "f16", 2), (0, "q8_0", 1), (0, "q4_0", 1), (1, "f16", 1)) as (
        ref, honest, q8, q4, other
    ):  # fmt: skip
        reference = Reference(ref)
        run = run_checks(Hoster("honest", honest), reference, pool, rng, args.honest)
        said = [r for r in run.results if r is not None]
        print(f"honest (f16, 2 threads): {len(said)} checks judged of {args.honest}, {run.failures} failed, "
              f"verdict {run.verdict.decided}, failed at {run.failed_at}")  # fmt: skip
        hosters = [
            Hoster("q8_0 declared f16", q8),
            Hoster("q4_0 declared f16", q4),
            Hoster("other weights", other),
            Hoster("temperature-zero", honest, other, "temperature-zero"),
            Hoster("looks-checked", honest, other, "looks-checked"),
        ]
        print(f"{'hoster':<22} {'checks':>7} {'failed':>7} {'caught':>7} {'median':>7} {'p90':>5} {'most':>5}")
        for hoster in hosters:
            until: list[int] = []
            checks = failures = 0
            for _ in range(args.runs):
                hoster.guesser.last_at = 0.0
                caught = run_checks(hoster, reference, pool, rng, MOST_CHECKS, stop_when_failed=True)
                judged = [r for r in caught.results if r is not None]
                checks += len(judged)
                failures += sum(not r.passed for r in judged)
                if caught.failed_at is not None:
                    until.append(caught.failed_at)
            ordered = sorted(until)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else None
            median = statistics.median(ordered) if ordered else "-"
            share = failures / max(checks, 1)
            print(f"{hoster.name:<22} {checks:>7} {share:>7.0%} {len(until):>3}/{args.runs:<3}"
                  f" {median:>7} {p90 or '-':>5} {max(ordered, default='-'):>5}")  # fmt: skip
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
