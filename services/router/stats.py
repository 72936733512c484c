"""What the router observes of real traffic: speed per hoster and model, reliability and trust per hoster,
and the cooldown of hosters that keep failing. Pure logic; the dispatcher feeds it attempt outcomes.

Trust, in [0, 1] (documented in the README):

    reliability = (successes + 1) / (attempts + 2)        over the last 200 attempts (Laplace: new = 0.5)
    midstream   = failures after the first byte / attempts over the same window
    latency     = min(1, advertised TTFT / observed p95 TTFT), or 1 when either is unknown
    history     = 0.8 * min(1, lifetime attempts / 100) + 0.2 * min(1, age / 1 hour)
    dishonesty  = usage reports past their bounds / (attempts + 2)      over the same window
    trust       = reliability * (1 - midstream) * sqrt(latency) * (0.5 + 0.5 * history) * (1 - dishonesty)^2

A new hoster starts at 0.25 and needs about a hundred clean attempts to pass 0.8.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from libs.contracts.common import MAX_COUNT, MAX_DURATION_MS
from libs.contracts.management import TrustTerms

WINDOW = 200
EWMA_ALPHA = 0.2
FAILURES_TO_COOL = 3
COOLDOWN_BASE_S = 10.0
COOLDOWN_MAX_S = 300.0
TRUSTED = 0.8
MIN_SAMPLES = 5
# How many plausible attempts after an implausibly fast one before a hoster's speed is believed again.
SUSPICION_WINDOW = 20


def _stored(value: Any, default: float, high: float = math.inf) -> float:
    """A number read back from the store: a finite one in [0, ``high``], else ``default``. What is stored was
    written by some router (an older one, a broken one, one fed a hoster's lie), so a null, a string or a
    number out of range counts as absent: it never stops a router from starting or from routing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= high else default


def _stored_count(value: Any) -> int:
    """A count read back from the store (see ``_stored``): 0 when it is not a whole number in range."""
    number = _stored(value, 0.0, MAX_COUNT)
    return int(number) if number.is_integer() else 0


def _stored_ms(value: Any) -> float | None:
    """A duration in milliseconds read back from the store, ``None`` when absent or unusable."""
    number = _stored(value, -1.0, MAX_DURATION_MS)
    return None if number < 0 else number


def _p95(samples: deque[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


# A hoster's dishonesty while its spot checks failed it on a model: its trust is at most a quarter of what
# it would be, never above ``TRUSTED``.
SPOT_CHECK_DISHONESTY = 0.5


@dataclass
class SpeedStats:
    """Observed speed of one hoster serving one model."""

    ttft_ewma_ms: float | None = None
    tps_ewma: float | None = None
    ttft_samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    # Attempts whose speed was past the model's plausibility bound: all of them, and a mark per recent
    # successful attempt.
    implausible: int = 0
    implausible_recent: deque[bool] = field(default_factory=lambda: deque(maxlen=SUSPICION_WINDOW))

    def observe(self, ttft_ms: float | None, tokens_per_s: float | None, implausible: bool = False) -> None:
        """Fold in one successful attempt: its time to first token and speed as the router measured them, or
        neither when its speed was implausible (the attempt's timing is not believed at all)."""
        self.implausible_recent.append(implausible)
        if implausible:
            self.implausible += 1
            return
        if ttft_ms is not None:
            self.ttft_samples.append(ttft_ms)
            self.ttft_ewma_ms = ttft_ms if self.ttft_ewma_ms is None else (
                EWMA_ALPHA * ttft_ms + (1 - EWMA_ALPHA) * self.ttft_ewma_ms
            )  # fmt: skip
        if tokens_per_s is not None:
            tps = tokens_per_s
            self.tps_ewma = tps if self.tps_ewma is None else EWMA_ALPHA * tps + (1 - EWMA_ALPHA) * self.tps_ewma

    @property
    def suspicious(self) -> bool:
        """One of the last ``SUSPICION_WINDOW`` successful attempts was implausibly fast: routing ranks the
        hoster as if it were slow (``services.router.service``) until that many plausible ones pass."""
        return any(self.implausible_recent)

    @property
    def expected_ttft_ms(self) -> float | None:
        """The time to first token routing expects: the median of the last 20, once there are
        ``MIN_SAMPLES`` (a cold connection's first request says little about a hoster)."""
        if len(self.ttft_samples) < MIN_SAMPLES:
            return None
        recent = sorted(list(self.ttft_samples)[-20:])
        return recent[len(recent) // 2]

    @property
    def ttft_p95_ms(self) -> float | None:
        """95th percentile of the recent times to first token."""
        return _p95(self.ttft_samples)

    def dump(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "ttft": self.ttft_ewma_ms,
            "tps": self.tps_ewma,
            "samples": list(self.ttft_samples),
            "implausible": self.implausible,
            "implausible_recent": "".join("i" if i else "." for i in self.implausible_recent),
        }

    @classmethod
    def load(cls, data: Any) -> SpeedStats:
        """State from ``dump``; what is unusable in it (see ``_stored``) is left out."""
        data = data if isinstance(data, dict) else {}
        samples = data.get("samples")
        kept = (_stored_ms(t) for t in (samples if isinstance(samples, list) else ()))
        tps = _stored(data.get("tps"), -1.0)
        recent = data.get("implausible_recent")
        return cls(
            _stored_ms(data.get("ttft")),
            None if tps < 0 else tps,
            deque((t for t in kept if t is not None), maxlen=WINDOW),
            _stored_count(data.get("implausible")),
            deque((c == "i" for c in (recent if isinstance(recent, str) else "")), maxlen=SUSPICION_WINDOW),
        )


def trust_score(reliability: float, midstream: float, latency: float, history: float, dishonesty: float) -> float:
    """The trust score: the terms multiplied as the module's docstring says."""
    return reliability * (1 - midstream) * math.sqrt(latency) * (0.5 + 0.5 * history) * (1 - dishonesty) ** 2


@dataclass
class HosterStats:
    """Reliability, trust and cooldown of one hoster, from the outcomes of its attempts."""

    first_seen: float
    lifetime: int = 0
    outcomes: deque[str] = field(default_factory=lambda: deque(maxlen=WINDOW))  # "ok", "early", "midstream"
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    cooldown_s: float = 0.0
    advertised_ttft_ms: float | None = None
    speed: dict[str, SpeedStats] = field(default_factory=dict)
    # Wall time of the last attempt observed (any outcome): an idle hoster gets probes.
    last_attempt: float = 0.0
    # Usage reports that broke the request's bounds: all of them, and a mark per recent attempt (aligned
    # with ``outcomes``: the owning router marks the attempt it just observed).
    discrepancies: int = 0
    discrepant: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    # Failed on a model by its spot checks (``services.router.verification``; set from the verdicts, which
    # are stored on their own): dishonest, whatever its usage reports say.
    failed_spot_checks: bool = False

    def observe(
        self,
        model: str,
        outcome: str,
        chunks_sent: int,
        ttft_ms: float | None,
        completion_tokens: int,
        duration_ms: float,
        now: float,
        client_error: bool = False,
        tokens_per_s: float | None = None,
        implausible_speed: bool = False,
    ) -> None:
        """Fold in one attempt's outcome (``succeeded``, ``failed`` or ``cancelled``) at wall time ``now``."""
        self.last_attempt = now
        if outcome == "cancelled" or client_error:
            return  # the client left, or the upstream refused the client's own parameters: not the hoster's doing
        self.lifetime += 1
        self.discrepant.append(False)
        if outcome == "succeeded":
            self.outcomes.append("ok")
            self.consecutive_failures = 0
            self.cooldown_s = 0.0
            self.speed.setdefault(model, SpeedStats()).observe(ttft_ms, tokens_per_s, implausible_speed)
            return
        self.outcomes.append("midstream" if chunks_sent else "early")
        self.consecutive_failures += 1
        if self.consecutive_failures >= FAILURES_TO_COOL:
            self.cooldown_s = min(COOLDOWN_MAX_S, self.cooldown_s * 2 if self.cooldown_s else COOLDOWN_BASE_S)
            self.cooldown_until = now + self.cooldown_s

    def observe_discrepancy(self, now: float | None = None, to_cool: int = 0) -> None:
        """The hoster reported usage past the request's bounds or the network's count (billed at them
        instead): mark its latest attempt; ``to_cool`` such attempts in a row (0: never) cool it down at wall
        time ``now``, as repeated failures do."""
        self.discrepancies += 1
        if self.discrepant:
            self.discrepant[-1] = True
        else:
            self.discrepant.append(True)
        recent = list(self.discrepant)[-to_cool:] if to_cool > 0 else []
        if now is not None and recent and len(recent) == to_cool and all(recent):
            self.cool_down(now)

    @property
    def dishonesty(self) -> float:
        """Share of recent attempts whose usage report broke a bound (smoothed as ``reliability`` is: one lie
        of a new hoster is not yet proof); at least ``SPOT_CHECK_DISHONESTY`` while a spot check verdict says
        it serves other weights than it claims."""
        share = sum(self.discrepant) / (len(self.discrepant) + 2)
        return max(share, SPOT_CHECK_DISHONESTY) if self.failed_spot_checks else share

    def cool_down(self, now: float) -> None:
        """Out of rotation now, as after repeated failures (a probe caught it answering wrong)."""
        self.consecutive_failures = max(self.consecutive_failures, FAILURES_TO_COOL)
        self.cooldown_s = min(COOLDOWN_MAX_S, self.cooldown_s * 2 if self.cooldown_s else COOLDOWN_BASE_S)
        self.cooldown_until = max(self.cooldown_until, now + self.cooldown_s)

    def cooling(self, now: float) -> bool:
        """Out of rotation: failing repeatedly and its cooldown has not run out."""
        return now < self.cooldown_until

    def probing(self, now: float) -> bool:
        """Its cooldown ran out but it has not succeeded since: it gets a little traffic to prove itself."""
        return self.cooldown_s > 0 and not self.cooling(now)

    @property
    def success_rate(self) -> float:
        """Share of recent attempts that succeeded (1.0 with no history)."""
        return self.outcomes.count("ok") / len(self.outcomes) if self.outcomes else 1.0

    def trust(self, now: float) -> float:
        """The trust score (see the module's docstring)."""
        return self.trust_terms(now).score

    def trust_terms(self, now: float) -> TrustTerms:
        """Each term of the trust score and the counts behind it (see the module's docstring)."""
        attempts = len(self.outcomes)
        successes = self.outcomes.count("ok")
        midstream_failures = self.outcomes.count("midstream")
        p95s = [p for p in (s.ttft_p95_ms for s in self.speed.values()) if p is not None]
        observed = max(p95s) if p95s else None
        latency = 1.0
        if self.advertised_ttft_ms and observed is not None:
            latency = min(1.0, self.advertised_ttft_ms / max(observed, 1e-3))
        age_s = max(0.0, now - self.first_seen)
        reliability = (successes + 1) / (attempts + 2)
        midstream = midstream_failures / attempts if attempts else 0.0
        history = 0.8 * min(1.0, self.lifetime / 100) + 0.2 * min(1.0, age_s / 3600)
        dishonesty = self.dishonesty
        return TrustTerms(
            score=trust_score(reliability, midstream, latency, history, dishonesty),
            reliability=reliability,
            midstream=midstream,
            latency=latency,
            history=history,
            dishonesty=dishonesty,
            window_attempts=attempts,
            window_successes=successes,
            window_midstream_failures=midstream_failures,
            window_discrepancies=sum(self.discrepant),
            lifetime_attempts=self.lifetime,
            age_s=age_s,
            advertised_ttft_ms=self.advertised_ttft_ms,
            observed_p95_ttft_ms=observed,
        )

    @property
    def ttft_median_ms(self) -> float | None:
        """The median of the recent times to first token over every model (the last 20 of each), once there
        are ``MIN_SAMPLES``: the hoster's speed on the public network page."""
        samples = sorted(t for s in self.speed.values() for t in list(s.ttft_samples)[-20:])
        return samples[len(samples) // 2] if len(samples) >= MIN_SAMPLES else None

    @property
    def implausible_speeds(self) -> int:
        """Attempts over its models whose speed was past the model's plausibility bound."""
        return sum(s.implausible for s in self.speed.values())

    @property
    def speed_suspicious_models(self) -> list[str]:
        """The models it is lately measured implausibly fast on (``SpeedStats.suspicious``), by name."""
        return sorted(model for model, s in self.speed.items() if s.suspicious)

    @property
    def tokens_per_s(self) -> float | None:
        """The mean over its models of their tokens per second (moving averages)."""
        rates = [s.tps_ewma for s in self.speed.values() if s.tps_ewma is not None]
        return sum(rates) / len(rates) if rates else None

    def dump(self) -> dict[str, Any]:
        """JSON-ready state, for the store that survives restarts."""
        return {
            "first_seen": self.first_seen,
            "lifetime": self.lifetime,
            "outcomes": "".join({"ok": "o", "early": "e", "midstream": "m"}[o] for o in self.outcomes),
            "consecutive_failures": self.consecutive_failures,
            "cooldown_until": self.cooldown_until,
            "cooldown_s": self.cooldown_s,
            "last_attempt": self.last_attempt,
            "discrepancies": self.discrepancies,
            "discrepant": "".join("d" if d else "." for d in self.discrepant),
            "speed": {model: s.dump() for model, s in self.speed.items()},
        }

    @classmethod
    def load(cls, data: Any, now: float) -> HosterStats:
        """State from ``dump``, read defensively (see ``_stored``): what is missing or unusable takes its
        default, a newcomer's (first seen ``now``); it never raises."""
        data = data if isinstance(data, dict) else {}
        names = {"o": "ok", "e": "early", "m": "midstream"}
        outcomes, discrepant, speed = data.get("outcomes"), data.get("discrepant"), data.get("speed")
        return cls(
            first_seen=_stored(data.get("first_seen"), now),
            lifetime=_stored_count(data.get("lifetime")),
            outcomes=deque((names[c] for c in _text(outcomes) if c in names), maxlen=WINDOW),
            consecutive_failures=_stored_count(data.get("consecutive_failures")),
            cooldown_until=_stored(data.get("cooldown_until"), 0.0, now + COOLDOWN_MAX_S),
            cooldown_s=_stored(data.get("cooldown_s"), 0.0, COOLDOWN_MAX_S),
            last_attempt=_stored(data.get("last_attempt"), 0.0),
            discrepancies=_stored_count(data.get("discrepancies")),
            discrepant=deque((c == "d" for c in _text(discrepant)), maxlen=WINDOW),
            speed={
                model: SpeedStats.load(state)
                for model, state in (speed.items() if isinstance(speed, dict) else ())
                if isinstance(model, str)
            },
        )


def _text(value: Any) -> str:
    """A stored string, ``""`` when it is not one."""
    return value if isinstance(value, str) else ""


@dataclass
class NetworkStats:
    """Stats of every hoster seen; replicas fed the same outcomes reach the same numbers."""

    hosters: dict[str, HosterStats] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def of(self, hoster_id: str, now: float) -> HosterStats:
        """The hoster's stats, created at first sight."""
        stats = self.hosters.get(hoster_id)
        if stats is None:
            stats = self.hosters[hoster_id] = HosterStats(first_seen=now)
        return stats

    def observe(self, hoster_id: str, now: float, **outcome: Any) -> None:
        """Fold in one attempt of ``hoster_id``."""
        self.of(hoster_id, now).observe(now=now, **outcome)
        self.dirty.add(hoster_id)

    def measured_ttft_p95s_ms(self, model: str) -> list[float]:
        """The p95 time to first token of each hoster measured serving ``model`` (``MIN_SAMPLES`` attempts)."""
        return [
            speed.ttft_p95_ms
            for stats in self.hosters.values()
            if (speed := stats.speed.get(model)) is not None
            and speed.expected_ttft_ms is not None
            and speed.ttft_p95_ms is not None
        ]

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        """States changed since the last call, to persist."""
        changed = {h: self.hosters[h].dump() for h in self.dirty if h in self.hosters}
        self.dirty.clear()
        return changed
