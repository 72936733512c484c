"""Credit leases, the router's side: admit an account's requests against credit billing already holds for
this router, instead of a round trip to billing per request.

Pure bookkeeping, no I/O (the dispatcher asks billing for leases and publishes what this book says). A lease
admits a request only while what it granted covers the request's whole hold; each admission is recorded
for billing (``pending``, published in batches off the request's path) and travels again with the request's
settlement. A lease is given back once it admits nothing more (a newer one replaced it, or it sat idle) and
its requests are over; billing takes back, on its own, a lease its router stops keeping alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.contracts.billing import LeasedAdmission

# How long a recalled lease's answer is remembered, for a recall of it repeated meanwhile.
RECALLED_KEPT_S = 60.0


@dataclass
class Lease:
    """One lease this router holds on one account."""

    lease_id: str
    account_id: str
    granted: int
    # Unix time after which it admits nothing (its UTC day is ending: billing's ``LeaseGranted.until``).
    until: float = float("inf")
    admitted: int = 0
    running: int = 0
    last_used: float = 0.0
    # Admits nothing more; given back once its requests are over.
    retired_at: float | None = None
    # Admissions billing has not been told of yet.
    pending: list[LeasedAdmission] = field(default_factory=list)
    batches: int = 0

    def covers(self, amount: int, wall: float) -> bool:
        return self.retired_at is None and wall < self.until and self.granted - self.admitted >= amount


class LeaseBook:
    """The leases one router holds and the requests each admitted."""

    def __init__(self) -> None:
        self._admitting: dict[str, Lease] = {}  # account -> the lease its requests are admitted against
        self._held: dict[str, Lease] = {}  # lease id -> lease, until given back
        self._requests: dict[str, tuple[Lease, LeasedAdmission]] = {}
        self._refused: dict[str, float] = {}  # account -> until when billing is not asked again
        self._recalled: dict[str, tuple[int, float]] = {}  # lease id -> (what it admitted, when recalled)

    def admit(self, account_id: str, admission: LeasedAdmission, now: float, wall: float) -> Lease | None:
        """Admit ``admission`` against the account's lease if it covers it (``wall``: the unix time)."""
        lease = self._admitting.get(account_id)
        if lease is None or not lease.covers(admission.amount, wall):
            return None
        lease.admitted += admission.amount
        lease.running += 1
        lease.last_used = now
        lease.pending.append(admission)
        self._requests[admission.request_id] = (lease, admission)
        return lease

    def add(self, lease: Lease, now: float) -> None:
        """A lease billing granted becomes the account's; the one before it admits nothing more."""
        before = self._admitting.get(lease.account_id)
        if before is not None:
            before.retired_at = now
        self._admitting[lease.account_id] = lease
        self._held[lease.lease_id] = lease
        self._refused.pop(lease.account_id, None)

    def refused(self, account_id: str, until: float) -> None:
        """Billing refused a lease on the account: admit its requests one by one until ``until``."""
        self._refused[account_id] = until

    def may_ask(self, account_id: str, now: float) -> bool:
        """Whether asking billing for a lease on the account is worth it now."""
        until = self._refused.get(account_id)
        if until is None:
            return True
        if now >= until:
            del self._refused[account_id]
            return True
        return False

    def finished(self, request_id: str) -> tuple[Lease, LeasedAdmission] | None:
        """A request is over: the lease that admitted it and its admission (``None``: not admitted by one)."""
        found = self._requests.pop(request_id, None)
        if found is not None:
            found[0].running -= 1
        return found

    def due(self, now: float, idle_s: float, stuck_s: float, wall: float) -> list[Lease]:
        """The leases to give back now, no longer held afterwards: retired ones whose requests are over, or
        retired for ``stuck_s`` (longer than any request may run: what they admitted is known, and their late
        settlements still find it held), idle ones (nothing running, nothing admitted for ``idle_s``) and
        those past their ``until`` (``wall``: the unix time)."""
        out: list[Lease] = []
        for lease in list(self._held.values()):
            idle = lease.running == 0 and now - lease.last_used >= idle_s
            if lease.retired_at is None and (idle or wall >= lease.until):
                lease.retired_at = now
            if lease.retired_at is not None and (lease.running == 0 or now - lease.retired_at >= stuck_s):
                out.append(self._forget(lease))
        return out

    def all(self, now: float) -> list[Lease]:
        """Every lease held, retired and no longer held (the router stops): give them all back."""
        out = []
        for lease in list(self._held.values()):
            lease.retired_at = lease.retired_at or now
            out.append(self._forget(lease))
        return out

    def _forget(self, lease: Lease) -> Lease:
        self._held.pop(lease.lease_id, None)
        if self._admitting.get(lease.account_id) is lease:
            del self._admitting[lease.account_id]
        return lease

    def recall(self, lease_id: str, now: float, retry_s: float) -> tuple[Lease | None, int | None]:
        """Billing takes the lease back: it admits nothing more and is no longer held, and billing is not asked
        for another on its account for ``retry_s`` (its credit is short). The lease (``None`` when it was not
        held) and what it admitted: a lease recalled lately is answered alike (two refusals may recall it at
        once), one never held with ``None``."""
        for old, (_, at) in list(self._recalled.items()):
            if now - at > RECALLED_KEPT_S:
                del self._recalled[old]
        lease = self._held.get(lease_id)
        if lease is None:
            known = self._recalled.get(lease_id)
            return None, known[0] if known is not None else None
        lease.retired_at = lease.retired_at or now
        self._recalled[lease_id] = (lease.admitted, now)
        self.refused(lease.account_id, now + retry_s)
        return self._forget(lease), lease.admitted

    def held_ids(self) -> list[str]:
        """The leases held now (for the keep-alive note)."""
        return list(self._held)

    def with_pending(self) -> list[Lease]:
        """Leases held whose admissions billing was not told of (one given back is told by ``_give_back``)."""
        return [lease for lease in self._held.values() if lease.pending]

    @staticmethod
    def take_pending(lease: Lease) -> tuple[list[LeasedAdmission], int]:
        """The admissions to tell billing of now, and this batch's number within the lease."""
        batch, lease.pending = lease.pending, []
        lease.batches += 1
        return batch, lease.batches
