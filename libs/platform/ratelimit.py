"""Budgets for what a client address may try and get wrong (wrong API keys at the ingress, wrong sign-ins
at the console): a token bucket per address."""

from __future__ import annotations

from collections import OrderedDict


class FailureBudget:
    """How many secrets that turn out wrong each client address may try: a token bucket per address, ``burst``
    deep, refilled at ``per_minute``. A try is spent before the secret is checked (so concurrent tries cannot
    all pass on the last token) and refunded when it was good. At most ``max_addresses`` are remembered, the
    least recently seen going first."""

    def __init__(self, per_minute: float, burst: int, max_addresses: int = 100_000) -> None:
        self._rate = per_minute / 60
        self._burst = float(burst)
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def wait_s(self, address: str, now: float) -> float:
        """0 when ``address`` may try an unknown key now, else how long until it may."""
        tokens = self._tokens(address, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate if self._rate > 0 else 60.0

    def refund(self, address: str) -> None:
        """A key ``address`` spent on was good after all."""
        tokens, at = self._buckets.get(address, (self._burst, 0.0))
        self._buckets[address] = (min(self._burst, tokens + 1), at)

    def spend(self, address: str, now: float) -> None:
        """``address`` tries a key billing must look up."""
        self._buckets[address] = (self._tokens(address, now) - 1, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
