"""billing's money SQL: accounts, keys, admission, settlement and the double-entry ledger.

Every movement is one ledger transaction whose entries sum to zero, written in the same database
transaction as the balance it changes; ``check`` proves the balances equal their entries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from libs.contracts import errors
from libs.contracts.billing import (
    KeyReport,
    LeaseCredits,
    LeasedAdmission,
    LeasedAdmissions,
    LeaseGranted,
    LeaseRefused,
    LeaseReturned,
    RateLimitState,
    Refused,
    RequestFinished,
    ReserveCredits,
    Reserved,
    UsageItem,
)
from libs.contracts.common import ErrorReport
from libs.contracts.pricing import Cost, cost_of
from services.billing import leases
from services.billing.books import (
    PLATFORM_FEES,
    TOPUPS,
    Conn,
    Entry,
    client_account,
    hoster_account,
    post,
    reserved_account,
)
from services.billing.repository import RECORD, PoolBound, records_of


class NotFound(Exception):
    """The account or key does not exist."""


@dataclass(frozen=True)
class AccountState:
    """An account's money, in micro-credits."""

    id: str
    name: str
    balance: int
    reserved: int
    spent_today: int
    daily_cap: int | None


def today() -> dt.date:
    """The UTC day daily caps count in."""
    return dt.datetime.now(dt.UTC).date()


def window_of(now: dt.datetime) -> tuple[dt.datetime, float]:
    """The one-minute rate window ``now`` falls in, and the seconds until it resets."""
    start = now.replace(second=0, microsecond=0)
    return start, 60.0 - (now - start).total_seconds()


def within(lines: list[tuple[str, Cost]], amount: int) -> list[tuple[str, Cost]]:
    """The charge lines scaled down, if they must be, so that they total at most ``amount`` (the request's
    reservation): the client never pays more than was held, and each hoster and the platform lose in
    proportion. Rounding goes to the hosters' loss, so the scaled parts still sum to the total exactly."""
    total = sum(cost.client for _, cost in lines)
    if total <= amount:
        return lines
    scaled: list[tuple[str, Cost]] = []
    for hoster_id, cost in lines:
        client = cost.client * amount // total
        fee = min(client, cost.fee * amount // total)
        scaled.append((hoster_id, Cost(client, client - fee, fee)))
    return scaled


# One statement, one round trip: claim the reservation while it is still open, and only then move the
# account's money and post the balanced ledger transaction. A reservation already closed changes nothing.
_CLOSE = """WITH claimed AS (
       UPDATE reservations
       SET status = $8, charged = $6, prompt_tokens = $9, completion_tokens = $10,
           model = coalesce($11, model), settled_at = now(),
           usage_discrepancy = coalesce($12, usage_discrepancy), usage_verified = $17
       WHERE request_id = $7 AND status = 'open'
       RETURNING request_id),
   account AS (
       UPDATE accounts
       SET balance = balance + $2 - $3,
           reserved = reserved - $4,
           day_spend = CASE WHEN spend_day = $5 THEN greatest(0, day_spend - $4 + $6)
                            ELSE day_spend END
       FROM claimed
       WHERE accounts.id = $1),
   tx AS (
       INSERT INTO ledger_transactions (kind, request_id, account_id)
       SELECT $13, request_id, $1 FROM claimed
       RETURNING id),
   posted AS (
       INSERT INTO ledger_entries (tx_id, ledger_account, kind, amount)
       SELECT tx.id, line.account, line.kind, line.amount
       FROM tx, unnest($14::text[], $15::text[], $16::bigint[]) WITH ORDINALITY
                AS line (account, kind, amount, n)
       ORDER BY line.n
       RETURNING 1)
   SELECT count(*) FROM claimed"""


# What open credit leases hold beyond recorded requests: the account's to spend, shown as balance in reports.
_FREE, _FREE_TODAY = leases.free_in_leases("a")
_HELD = "SELECT request_id, account_id, amount, spend_day, status FROM reservations WHERE request_id = $1"
_HELD_MANY = """SELECT request_id, account_id, amount, spend_day, status FROM reservations
                WHERE request_id = ANY($1::text[])"""


# Recall a lease from its router: what it admitted, or None (no answer, or no such lease there).
Recall = Callable[[str, str], Awaitable[int | None]]


class Unbacked(Exception):
    """A request admitted against a lease has neither the lease nor the balance to hold its reservation."""


def _charge_of(event: RequestFinished) -> tuple[list[tuple[str, Cost]], int, int, str | None, bool | None]:
    """What a finished request's billed attempts cost (hoster by hoster), its token counts (never below zero:
    the router already held them to the request's bounds), what the hosters' reports broke, and whether its
    usage was verified: every billed attempt's counted by the network (``None``: nothing was billed)."""
    lines = [
        (
            a.hoster_id,
            cost_of(
                max(0, a.usage.prompt_tokens),
                max(0, a.usage.completion_tokens),
                a.input_price,
                a.output_price,
                event.fee_bps,
            ),
        )
        for a in event.attempts
    ]
    prompt = sum(max(0, a.usage.prompt_tokens) for a in event.attempts)
    completion = sum(max(0, a.usage.completion_tokens) for a in event.attempts)
    discrepancy = "; ".join(
        f"attempt {a.attempt} ({a.hoster_id}): {a.usage_discrepancy}" for a in event.attempts if a.usage_discrepancy
    )
    verified = all(a.usage_counted for a in event.attempts) if event.attempts else None
    return lines, prompt, completion, discrepancy or None, verified


def _close_args(
    held: asyncpg.Record,
    lines: list[tuple[str, Cost]],
    prompt_tokens: int,
    completion_tokens: int,
    model: str | None,
    status: str,
    discrepancy: str | None,
    usage_verified: bool | None = None,
) -> tuple[Any, ...]:
    """``_CLOSE``'s arguments: ``lines`` charged within the reservation, the rest released, one balanced
    ledger transaction."""
    account_id = str(held["account_id"])
    amount: int = held["amount"]
    lines = within(lines, amount)
    total = sum(cost.client for _, cost in lines)
    from_held = min(total, amount)
    # A charge never outgrows its reservation (``within``): nothing comes from the balance, nothing is the
    # platform's loss.
    from_balance = 0
    shortfall = 0
    charged = from_held
    per_hoster: dict[str, int] = {}
    for hoster_id, cost in lines:
        per_hoster[hoster_id] = per_hoster.get(hoster_id, 0) + cost.hoster
    fees = sum(cost.fee for _, cost in lines)
    entries: list[Entry] = [
        (reserved_account(account_id), "charge", -from_held),
        (reserved_account(account_id), "release", -(amount - from_held)),
        (client_account(account_id), "release", amount - from_held),
        (client_account(account_id), "charge", -from_balance),
        *[(hoster_account(h), "hoster_earning", earned) for h, earned in per_hoster.items()],
        (PLATFORM_FEES, "platform_fee", fees - shortfall),
    ]
    lines_out = [e for e in entries if e[2] != 0]
    if sum(amount for _, _, amount in lines_out) != 0:
        raise ValueError(f"unbalanced ledger transaction for {held['request_id']}: {lines_out}")
    return (
        held["account_id"],
        amount - from_held,
        from_balance,
        amount,
        held["spend_day"],
        charged,
        held["request_id"],
        status,
        prompt_tokens,
        completion_tokens,
        model,
        discrepancy,
        "settle" if status == "settled" else "expire",
        [account for account, _, _ in lines_out],
        [kind for _, kind, _ in lines_out],
        [value for _, _, value in lines_out],
        usage_verified,
    )


class Ledger(PoolBound):
    """All of billing's writes and reads of money."""

    # Accounts and keys ---------------------------------------------------------------------------------

    async def create_account(self, name: str, credits: int, daily_cap: int | None = None) -> AccountState:
        """A new account, topped up with ``credits`` micro-credits."""
        account_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (id, name, daily_cap) VALUES ($1, $2, $3)", account_id, name, daily_cap
            )
            if credits:
                await self._topup(conn, account_id, credits)
        return await self.account(account_id)

    async def topup(self, account_id: str, amount: int) -> AccountState:
        """Add prepaid credits."""
        if amount <= 0:
            raise ValueError("a top-up must be positive")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._topup(conn, account_id, amount)
        return await self.account(account_id)

    async def _topup(self, conn: Conn, account_id: str, amount: int) -> None:
        updated = await conn.fetchval(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING id", account_id, amount
        )
        if updated is None:
            raise NotFound(f"no account {account_id}")
        await post(
            conn,
            "topup",
            [(TOPUPS, "topup", -amount), (client_account(account_id), "topup", amount)],
            account_id,
            None,
        )

    async def set_daily_cap(self, account_id: str, cap: int | None) -> AccountState:
        """Set (or with ``None`` remove) the daily spend cap."""
        updated = await self._pool.fetchval(
            "UPDATE accounts SET daily_cap = $2 WHERE id = $1 RETURNING id", account_id, cap
        )
        if updated is None:
            raise NotFound(f"no account {account_id}")
        return await self.account(account_id)

    async def account(self, account_id: str) -> AccountState:
        """An account's money now."""
        row = await self._pool.fetchrow(
            f"""SELECT id::text, name, balance + {_FREE} AS balance, reserved - {_FREE} AS reserved, daily_cap,
                       CASE WHEN spend_day = $2 THEN day_spend - {_FREE_TODAY} ELSE 0 END AS spent_today
                FROM accounts a WHERE id = $1""",
            account_id,
            today(),
        )
        if row is None:
            raise NotFound(f"no account {account_id}")
        return AccountState(
            row["id"], row["name"], row["balance"], row["reserved"], row["spent_today"], row["daily_cap"]
        )

    async def key_report(self, key_id: str, account_id: str) -> KeyReport | None:
        """Key ``key_id`` of ``account_id`` (``None`` if it is not that account's): its limits, what it was
        charged all time and this UTC day, week (from Monday) and month, and its account's money now."""
        day = today()
        row = await self._pool.fetchrow(
            f"""SELECT k.prefix, k.rpm, k.tpm, a.balance + {_FREE} AS balance, a.daily_cap,
                       CASE WHEN a.spend_day = $3 THEN a.day_spend - {_FREE_TODAY} ELSE 0 END AS spent_today,
                      coalesce(sum(r.charged), 0)::bigint AS usage,
                      coalesce(sum(r.charged) FILTER (WHERE r.spend_day = $3), 0)::bigint AS usage_daily,
                      coalesce(sum(r.charged) FILTER (WHERE r.spend_day >= $4), 0)::bigint AS usage_weekly,
                      coalesce(sum(r.charged) FILTER (WHERE r.spend_day >= $5), 0)::bigint AS usage_monthly
               FROM api_keys k
               JOIN accounts a ON a.id = k.account_id
               LEFT JOIN reservations r ON r.account_id = k.account_id AND r.key_id = k.id
               WHERE k.id = $1 AND k.account_id = $2
               GROUP BY k.id, a.id""",
            key_id,
            account_id,
            day,
            day - dt.timedelta(days=day.weekday()),
            day.replace(day=1),
        )
        if row is None:
            return None
        return KeyReport(key_id=key_id, **dict(row))

    # Admission -----------------------------------------------------------------------------------------

    async def reserve(self, command: ReserveCredits, now: dt.datetime | None = None) -> Reserved | Refused:
        """Admit a request in one transaction: count it against the key's rate window, then hold its
        maximum cost against balance and daily cap with one conditional UPDATE (never check-then-write).
        A refusal rolls the whole transaction back."""
        caller = command.caller
        now = now or dt.datetime.now(dt.UTC)
        window, reset_s = window_of(now)
        rate = RateLimitState(limit_requests=caller.rpm, limit_tokens=caller.tpm, reset_s=reset_s)
        if caller.tpm is not None and command.tokens > caller.tpm:
            return Refused(
                error=errors.rate_limited(
                    f"Request too large: it may use {command.tokens} tokens, the key's limit is {caller.tpm} "
                    "tokens per minute. Lower max_tokens or the prompt.",
                    reset_s,
                ),
                rate=rate,
            )
        async with self._pool.acquire() as conn:
            try:
                # Without rate limits admission is one statement, atomic by itself: no BEGIN and COMMIT round
                # trips around it. With them, the window's count and the hold commit together.
                limited = caller.rpm is not None or caller.tpm is not None
                async with conn.transaction() if limited else contextlib.nullcontext():
                    if limited:
                        counted = await conn.fetchrow(
                            """INSERT INTO rate_windows AS w (key_id, window_start, requests, tokens)
                               VALUES ($1, $2, 1, $3)
                               ON CONFLICT (key_id, window_start) DO UPDATE
                                 SET requests = w.requests + 1, tokens = w.tokens + $3
                                 WHERE ($4::int IS NULL OR w.requests < $4)
                                   AND ($5::bigint IS NULL OR w.tokens + $3 <= $5)
                               RETURNING requests, tokens""",
                            caller.key_id,
                            window,
                            command.tokens,
                            caller.rpm,
                            caller.tpm,
                        )
                        if counted is None:
                            raise _Refusal("rate")
                        rate = _remaining(rate, counted["requests"], counted["tokens"])
                    day = today()
                    # One statement, one round trip: hold the amount (the conditional UPDATE is the atomic
                    # check), record the reservation and post its balanced ledger transaction.
                    held = await conn.fetchval(
                        """WITH held AS (
                               UPDATE accounts
                               SET balance = balance - $2,
                                   reserved = reserved + $2,
                                   day_spend = (CASE WHEN spend_day = $3 THEN day_spend ELSE 0 END) + $2,
                                   spend_day = $3
                               WHERE id = $1 AND balance >= $2
                                 AND (daily_cap IS NULL
                                      OR (CASE WHEN spend_day = $3 THEN day_spend ELSE 0 END) + $2 <= daily_cap)
                               RETURNING id),
                           reservation AS (
                               INSERT INTO reservations
                                   (request_id, account_id, key_id, amount, fee_bps, spend_day, endpoint)
                               SELECT $4, id, $5, $2, $6, $3, $9 FROM held
                               RETURNING request_id),
                           tx AS (
                               INSERT INTO ledger_transactions (kind, request_id, account_id)
                               SELECT 'reserve', request_id, $1 FROM reservation
                               RETURNING id),
                           entries AS (
                               INSERT INTO ledger_entries (tx_id, ledger_account, kind, amount)
                               SELECT tx.id, line.account, 'reserve', line.amount
                               FROM tx,
                                    (VALUES ($7::text, -$2::bigint), ($8::text, $2::bigint)) AS line (account, amount)
                               RETURNING tx_id)
                           SELECT count(*) FROM entries""",
                        caller.account_id,
                        command.amount,
                        day,
                        command.request_id,
                        caller.key_id,
                        command.fee_bps,
                        client_account(caller.account_id),
                        reserved_account(caller.account_id),
                        command.endpoint,
                    )
                    if not held:
                        raise _Refusal("credits")
            except _Refusal as refusal:
                if refusal.reason == "rate":
                    row = await conn.fetchrow(
                        "SELECT requests, tokens FROM rate_windows WHERE key_id = $1 AND window_start = $2",
                        caller.key_id,
                        window,
                    )
                    rate = _remaining(rate, row["requests"] if row else 0, row["tokens"] if row else 0)
                    return Refused(
                        error=errors.rate_limited(f"Rate limit reached for key {caller.key_id}.", reset_s), rate=rate
                    )
                return Refused(error=await self._credit_error(conn, caller.account_id, command.amount), rate=rate)
        return Reserved(rate=rate)

    async def _credit_error(self, conn: Conn, account_id: str, amount: int) -> ErrorReport:
        """Why a reservation failed (read after the atomic refusal, only to word the message)."""
        row = await conn.fetchrow(
            f"""SELECT balance, {_FREE} AS leased, daily_cap,
                       CASE WHEN spend_day = $2 THEN day_spend - {_FREE_TODAY} ELSE 0 END AS spent
                FROM accounts a WHERE id = $1""",
            account_id,
            today(),
        )
        if row is None or row["balance"] < amount or row["daily_cap"] is None:
            balance = row["balance"] + row["leased"] if row else 0
            return errors.insufficient_credits(amount, balance)
        return errors.daily_cap_reached(row["spent"], row["daily_cap"])

    # Settlement ----------------------------------------------------------------------------------------

    async def settle(self, event: RequestFinished) -> bool:
        """Charge a finished request's billed attempts and release the rest; ``False`` if already settled.
        A request admitted against a credit lease whose reservation billing has not recorded yet gets it
        recorded first, in the same transaction. Its attempts' records are kept (once).

        Counts below zero count as zero (the router already held them to the request's bounds)."""
        lines, prompt, completion, discrepancy, verified = _charge_of(event)
        async with self._pool.acquire() as conn:
            if event.records:
                await conn.executemany(RECORD, records_of([event]))
            # What a reservation holds never changes once made: read without a lock; the close claims it only
            # while still open, atomically, so a concurrent settle or sweep of the same request changes nothing.
            held = await conn.fetchrow(_HELD, event.request_id)
            if held is None and event.leased is not None and event.lease_id is not None:
                async with conn.transaction():
                    await self._attach(conn, event.lease_id, [event.leased])
                    held = await conn.fetchrow(_HELD, event.request_id)
                    if held is None or held["status"] != "open":
                        return False
                    return await self._close(
                        conn, held, lines, prompt, completion, event.model, "settled", discrepancy, verified
                    )
            if held is None or held["status"] != "open":
                return False
            return await self._close(
                conn, held, lines, prompt, completion, event.model, "settled", discrepancy, verified
            )

    async def settle_many(self, events: list[RequestFinished]) -> int:
        """Settle several finished requests, each as ``settle`` would, in one transaction of three round trips
        (read their reservations, close them all pipelined, commit; plus one per credit lease whose requests'
        reservations are not recorded yet); how many were open. All or none: when it raises, nothing was
        settled (settle them one by one). One alone takes ``settle``'s fewer round trips, with no transaction
        (under light load most batches hold one)."""
        if len(events) == 1:
            return int(await self.settle(events[0]))
        charges = [(event, *_charge_of(event)) for event in events]
        ids = [event.request_id for event in events]
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_HELD_MANY, ids)
            held = {row["request_id"]: row for row in rows}
            unrecorded: dict[str, list[LeasedAdmission]] = {}
            for event in events:
                if event.request_id not in held and event.leased is not None and event.lease_id is not None:
                    unrecorded.setdefault(event.lease_id, []).append(event.leased)
            if unrecorded:
                for lease_id in sorted(unrecorded):  # one lock order for every batch
                    await self._attach(conn, lease_id, unrecorded[lease_id])
                held = {row["request_id"]: row for row in await conn.fetch(_HELD_MANY, ids)}
            closes = [
                _close_args(held[e.request_id], lines, prompt, completion, e.model, "settled", discrepancy, verified)
                for e, lines, prompt, completion, discrepancy, verified in charges
                if e.request_id in held and held[e.request_id]["status"] == "open"
            ]
            # In account order, so concurrent batches lock accounts in one order (no deadlock between them).
            # Two events of one request in a batch: the claim lets the first through, the second changes nothing.
            closes.sort(key=lambda args: str(args[0]))
            if closes:
                await conn.executemany(_CLOSE, closes)
            records = records_of(events)
            if records:
                await conn.executemany(RECORD, records)
        return len({args[6] for args in closes})

    # Credit leases (``services.billing.leases``) ---------------------------------------------------------

    async def lease(self, command: LeaseCredits, share: int) -> LeaseGranted | LeaseRefused:
        """Grant a router a credit lease on an account, or refuse (too little to spend)."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await leases.grant(conn, command, share, dt.datetime.now(dt.UTC))

    async def record_leased(self, event: LeasedAdmissions) -> None:
        """Record the reservations of requests a router admitted against a lease (those already recorded, by
        their settlement, are left alone)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._attach(conn, event.lease_id, event.admissions)

    async def return_lease(self, event: LeaseReturned) -> int:
        """A router gives a lease back: what its requests did not take goes back to the balance."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await leases.take_back(conn, event.lease_id, event.admitted, "returned", event.account_id)

    async def leases_lately(self, account_id: str, within_s: float) -> tuple[list[tuple[str, str]], bool]:
        """The account's open leases, as (lease id, router id); and whether it had any lease open or taken back
        in the last ``within_s`` (an account that had none has no lease credit to wait for)."""
        rows = await self._pool.fetch(
            """SELECT lease_id::text, router_id, status = 'open' AS open FROM leases
               WHERE account_id = $1
                 AND (status = 'open' OR touched_at > now() - make_interval(secs => $2))""",
            account_id,
            within_s,
        )
        return [(row["lease_id"], row["router_id"]) for row in rows if row["open"]], bool(rows)

    async def _attach(self, conn: Conn, lease_id: str, admissions: list[LeasedAdmission]) -> None:
        """``leases.attach``; when the lease can no longer hold them (it was swept while its router's events
        were delayed), each reservation comes from the balance instead. Raises ``Unbacked`` when the balance
        cannot cover one either: the event is retried, then dead-lettered for an operator."""
        try:
            async with conn.transaction():  # a savepoint: a refused attach leaves nothing behind
                await leases.attach(conn, lease_id, admissions)
            return
        except leases.LeaseCannotBack:
            pass
        account_id = await conn.fetchval("SELECT account_id::text FROM leases WHERE lease_id = $1", lease_id)
        if account_id is None:
            raise Unbacked(f"no lease {lease_id}")
        for admission in admissions:
            exists = await conn.fetchval("SELECT 1 FROM reservations WHERE request_id = $1", admission.request_id)
            if exists is None and not await leases.reserve_unbacked(conn, account_id, admission):
                raise Unbacked(f"request {admission.request_id}: lease {lease_id} taken back, balance too low")

    async def expire_stale_leases(self, older_than_s: float, recall: Recall) -> tuple[int, int]:
        """Take back open leases not kept alive for ``older_than_s`` (their router died, or billing did not hear
        it), or counted in a UTC day that is over (their router gives those back itself, shortly before
        midnight): each is recalled from its router first, whose word on what it admitted stands if it
        answers. Then release what given-back leases kept for admissions that never arrived. How many leases
        were taken back, and how much the given-back ones released."""
        rows = await self._pool.fetch(
            """SELECT lease_id::text, router_id FROM leases
               WHERE status = 'open' AND (touched_at < now() - make_interval(secs => $1)
                                          OR spend_day < ((now() AT TIME ZONE 'UTC') - interval '2 minutes')::date)""",
            older_than_s,
        )
        for row in rows:
            await self.expire_lease(row["lease_id"], await recall(row["lease_id"], row["router_id"]))
        return len(rows), await self.release_stranded_leases(older_than_s)

    async def expire_lease(self, lease_id: str, admitted: int | None) -> int:
        """Take a stale lease back: ``admitted`` is its router's word when it answered the recall, else only
        what is recorded stays held."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await leases.take_back(conn, lease_id, admitted, "expired")

    async def release_stranded_leases(self, older_than_s: float) -> int:
        """Release what given-back leases kept for admissions that never arrived within ``older_than_s``."""
        released = 0
        async with self._pool.acquire() as conn:
            ids = await conn.fetch(
                """SELECT lease_id::text FROM leases
                   WHERE status <> 'open' AND granted > attached + released
                     AND touched_at < now() - make_interval(secs => $1)""",
                older_than_s,
            )
            for row in ids:
                async with conn.transaction():
                    released += await leases.release_stranded(conn, row["lease_id"])
        return released

    async def touch(self, request_ids: list[str], lease_ids: list[str] | None = None) -> None:
        """The requests ``request_ids`` are still running, and the leases ``lease_ids`` still held: their open
        reservations and leases are not stale."""
        async with self._pool.acquire() as conn:
            if request_ids:
                await conn.execute(
                    "UPDATE reservations SET touched_at = now() WHERE request_id = ANY($1::text[]) AND status = 'open'",
                    request_ids,
                )
            if lease_ids:
                await conn.execute(
                    "UPDATE leases SET touched_at = now() WHERE lease_id = ANY($1::uuid[]) AND status = 'open'",
                    [uuid.UUID(lease_id) for lease_id in lease_ids],
                )

    async def expire_stale(self, older_than_s: float) -> int:
        """Close reservations whose request never reported its end (its router died before settling it),
        charging nothing: the network's record of what the client received died with that router, and a
        hoster's report alone is never billed. Replicas may sweep together: rows another one holds are
        skipped."""
        closed = 0
        async with self._pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    held = await conn.fetchrow(
                        """SELECT * FROM reservations
                           WHERE status = 'open' AND touched_at < now() - make_interval(secs => $1)
                           ORDER BY touched_at LIMIT 1 FOR UPDATE SKIP LOCKED""",
                        older_than_s,
                    )
                    if held is None:
                        return closed
                    closed += await self._close(conn, held, [], 0, 0, None, "expired")

    async def _close(
        self,
        conn: Conn,
        held: asyncpg.Record,
        lines: list[tuple[str, Cost]],
        prompt_tokens: int,
        completion_tokens: int,
        model: str | None,
        status: str,
        discrepancy: str | None = None,
        usage_verified: bool | None = None,
    ) -> bool:
        """Charge ``lines`` from the reservation (never more than it), pay hosters and the platform, release
        what is left; one balanced ledger transaction. ``discrepancy``: what the hosters' reports broke;
        ``usage_verified``: whether what was billed was the network's count (``_charge_of``).
        ``False`` when the reservation was no longer open (closed by someone else first): nothing changed."""
        args = _close_args(held, lines, prompt_tokens, completion_tokens, model, status, discrepancy, usage_verified)
        return bool(await conn.fetchval(_CLOSE, *args))

    # Reports -------------------------------------------------------------------------------------------

    async def open_reservations(self) -> int:
        """How many admitted requests are not settled yet."""
        count: int = await self._pool.fetchval("SELECT count(*) FROM reservations WHERE status = 'open'")
        return count

    async def check(self) -> list[str]:
        """Every way the books could be wrong; empty when they balance."""
        problems = [
            f"transaction {r['tx_id']} does not sum to zero ({r['total']})"
            for r in await self._pool.fetch(
                "SELECT tx_id, sum(amount) AS total FROM ledger_entries GROUP BY tx_id HAVING sum(amount) <> 0"
            )
        ]
        rows = await self._pool.fetch(
            """SELECT a.id::text AS id, a.balance, a.reserved,
                      coalesce((SELECT sum(amount) FROM ledger_entries WHERE ledger_account = 'client:' || a.id), 0)
                          AS client_entries,
                      coalesce((SELECT sum(amount) FROM ledger_entries WHERE ledger_account = 'reserved:' || a.id), 0)
                          AS reserved_entries,
                      coalesce((SELECT sum(amount) FROM reservations r
                                WHERE r.account_id = a.id AND status = 'open'), 0)
                      + coalesce((SELECT sum(granted - attached - released) FROM leases l
                                  WHERE l.account_id = a.id), 0) AS open_reservations
               FROM accounts a"""
        )
        for r in rows:
            if r["balance"] != r["client_entries"]:
                problems.append(f"account {r['id']}: balance {r['balance']} but entries sum {r['client_entries']}")
            if r["reserved"] != r["reserved_entries"]:
                problems.append(f"account {r['id']}: reserved {r['reserved']} but entries sum {r['reserved_entries']}")
            if r["reserved"] != r["open_reservations"]:
                problems.append(
                    f"account {r['id']}: reserved {r['reserved']} but open reservations and leases hold "
                    f"{r['open_reservations']}"
                )
        problems += [
            f"lease {r['lease_id']}: attached {r['attached']} but its reservations hold {r['held']}"
            for r in await self._pool.fetch(
                """SELECT l.lease_id::text, l.attached, coalesce(r.held, 0) AS held
                   FROM leases l
                   LEFT JOIN (SELECT lease_id, sum(amount) AS held FROM reservations
                              WHERE lease_id IS NOT NULL GROUP BY lease_id) r USING (lease_id)"""
            )
            if r["attached"] != r["held"]
        ]
        total = await self._pool.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger_entries")
        if total != 0:
            problems.append(f"all entries sum to {total}, not zero")
        return problems

    async def hoster_earnings(self, hoster_id: str | None = None) -> list[dict[str, Any]]:
        """Earnings per hoster (micro-credits), from the ledger."""
        rows = await self._pool.fetch(
            """SELECT substr(ledger_account, 8) AS hoster_id, sum(amount)::bigint AS earned, count(*) AS entries
               FROM ledger_entries
               WHERE ledger_account LIKE 'hoster:%' AND ($1::text IS NULL OR ledger_account = 'hoster:' || $1)
               GROUP BY ledger_account ORDER BY earned DESC""",
            hoster_id,
        )
        return [dict(r) for r in rows]

    async def usage(self, account_id: str, limit: int, key_id: str | None = None) -> list[UsageItem]:
        """An account's most recent requests; with ``key_id``, only those that key made."""
        where, args = "account_id = $2", [account_id]
        if key_id is not None:
            # Its own statement rather than "$3 IS NULL OR ...", so each reads its own index (by key, by account).
            where, args = "key_id = $3 AND account_id = $2", [account_id, key_id]
        rows = await self._pool.fetch(
            f"""SELECT request_id, model, status, prompt_tokens, completion_tokens, charged,
                       extract(epoch FROM created_at) AS created, extract(epoch FROM settled_at) AS settled
                FROM reservations WHERE {where} ORDER BY created_at DESC LIMIT $1""",
            limit,
            *args,
        )
        return [
            UsageItem(
                request_id=r["request_id"],
                model=r["model"],
                status=r["status"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                cost=r["charged"],
                created_at=float(r["created"]),
                settled_at=float(r["settled"]) if r["settled"] is not None else None,
            )
            for r in rows
        ]


class _Refusal(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _remaining(rate: RateLimitState, requests: int, tokens: int) -> RateLimitState:
    return rate.model_copy(
        update={
            "remaining_requests": None if rate.limit_requests is None else rate.limit_requests - requests,
            "remaining_tokens": None if rate.limit_tokens is None else rate.limit_tokens - tokens,
        }
    )
