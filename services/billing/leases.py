"""Credit leases, billing's side: grant one, record the requests admitted against it, take it back.

A router that holds a lease admits an account's requests against it without a round trip to billing. The
money rules stay billing's: a lease is held from the balance (and counted in the day's spend) like any
reservation, is at most ``1/share`` of what the account may still spend, and every request admitted against
it becomes a reservation row of its own (``attach``), settled and swept exactly as one admitted by billing.
What no request took goes back to the balance when the router gives the lease back, or when it stops keeping
it alive (its router died). ``accounts.reserved`` = open reservations + each lease's granted - attached -
released (``Ledger.check``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from libs.contracts.billing import LeaseCredits, LeasedAdmission, LeaseGranted, LeaseRefused
from services.billing.books import Conn, client_account, post, reserved_account


def free_in_leases(accounts: str) -> tuple[str, str]:
    """SQL for reports: what the open leases on the account (table alias ``accounts``) hold beyond the requests
    billing recorded, in all and of the day the account's spend counts (used where that day is today). The
    account may still spend it (a request is admitted against it wherever it arrives: leases are recalled
    before a refusal), so reports show it in the balance, not as held or spent."""
    where = f"FROM leases l WHERE l.account_id = {accounts}.id AND l.status = 'open'"
    free = f"(SELECT coalesce(sum(l.granted - l.attached - l.released), 0)::bigint {where}"
    return f"{free})", f"{free} AND l.spend_day = {accounts}.spend_day)"


class LeaseCannotBack(Exception):
    """The lease cannot hold these admissions (it was taken back, or they exceed it)."""


# A lease admits nothing in the last minute of the UTC day it counts in (clocks of routers and billing may
# differ by a little): a request of the next day counts in the next day's cap.
DAY_MARGIN_S = 60.0


def lease_until(day: dt.date) -> float:
    """Unix time after which a lease counted in ``day`` admits nothing."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return end.timestamp() - DAY_MARGIN_S


async def grant(conn: Conn, command: LeaseCredits, share: int, now: dt.datetime) -> LeaseGranted | LeaseRefused:
    """Hold a lease from the account: at most ``command.amount``, at most ``1/share`` of its balance and of
    what its daily cap leaves, never below ``command.minimum``, admitting nothing past its UTC day. A lease id
    already known (given back before its grant was heard of) is refused. Run inside a transaction."""
    day = now.date()
    until = lease_until(day)
    if now.timestamp() >= until:
        return LeaseRefused()
    row = await conn.fetchrow(
        """SELECT balance, daily_cap, CASE WHEN spend_day = $2 THEN day_spend ELSE 0 END AS spent
           FROM accounts WHERE id = $1 FOR UPDATE""",
        command.account_id,
        day,
    )
    if row is None:
        return LeaseRefused()
    amount = min(command.amount, row["balance"] // share)
    if row["daily_cap"] is not None:
        amount = min(amount, max(0, row["daily_cap"] - row["spent"]) // share)
    if amount < command.minimum:
        return LeaseRefused()
    lease_id = uuid.UUID(command.lease_id)
    created = await conn.fetchval(
        """INSERT INTO leases (lease_id, account_id, router_id, granted, spend_day) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (lease_id) DO NOTHING RETURNING 1""",
        lease_id,
        command.account_id,
        command.router_id,
        amount,
        day,
    )
    if created is None:
        return LeaseRefused()
    await conn.execute(
        """UPDATE accounts
           SET balance = balance - $2, reserved = reserved + $2,
               day_spend = (CASE WHEN spend_day = $3 THEN day_spend ELSE 0 END) + $2, spend_day = $3
           WHERE id = $1""",
        command.account_id,
        amount,
        day,
    )
    await post(
        conn,
        "lease",
        [
            (client_account(command.account_id), "reserve", -amount),
            (reserved_account(command.account_id), "reserve", amount),
        ],
        command.account_id,
        str(lease_id),
    )
    return LeaseGranted(lease_id=str(lease_id), amount=amount, until=until)


# One statement: the reservations of the admissions not recorded yet, and the lease's attached sum grown by
# theirs, only while the lease can hold them (else nothing is returned and the caller rolls back).
_ATTACH = """WITH input AS (
        SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[])
            AS t (request_id, key_id, amount, fee_bps, endpoint)),
    added AS (
        INSERT INTO reservations (request_id, account_id, key_id, amount, fee_bps, spend_day, endpoint, lease_id)
        SELECT i.request_id, l.account_id, i.key_id, i.amount, i.fee_bps, l.spend_day, i.endpoint, l.lease_id
        FROM input i, leases l WHERE l.lease_id = $1
        ON CONFLICT (request_id) DO NOTHING
        RETURNING amount)
    UPDATE leases SET attached = attached + (SELECT coalesce(sum(amount), 0) FROM added)
    WHERE lease_id = $1 AND attached + released + (SELECT coalesce(sum(amount), 0) FROM added) <= granted
    RETURNING (SELECT count(*) FROM added)"""


async def attach(conn: Conn, lease_id: str, admissions: Sequence[LeasedAdmission]) -> int:
    """Record the reservations of ``admissions`` (a request already recorded is left as it is) out of the
    lease; how many were new. Raises ``LeaseCannotBack`` when the lease cannot hold them: the caller's
    transaction must roll back. Run inside a transaction."""
    added = await conn.fetchval(
        _ATTACH,
        lease_id,
        [a.request_id for a in admissions],
        [a.key_id for a in admissions],
        [a.amount for a in admissions],
        [a.fee_bps for a in admissions],
        [a.endpoint for a in admissions],
    )
    if added is None:
        raise LeaseCannotBack(f"lease {lease_id} cannot hold {len(admissions)} admissions")
    return int(added)


async def reserve_unbacked(conn: Conn, account_id: str, admission: LeasedAdmission) -> bool:
    """Record the reservation of a request whose lease can no longer hold it (the lease was swept while its
    router's events were delayed) from the balance, if the balance covers it; ``False`` when it does not.
    The request already ran: its day's cap is not asked. The reservation is not the lease's (``attached``
    counts exactly the reservations that name the lease). Run inside a transaction."""
    day = dt.datetime.now(dt.UTC).date()
    held = await conn.fetchval(
        """WITH held AS (
               UPDATE accounts
               SET balance = balance - $2, reserved = reserved + $2,
                   day_spend = (CASE WHEN spend_day = $3 THEN day_spend ELSE 0 END) + $2, spend_day = $3
               WHERE id = $1 AND balance >= $2
               RETURNING id)
           INSERT INTO reservations (request_id, account_id, key_id, amount, fee_bps, spend_day, endpoint)
           SELECT $4, id, $5, $2, $6, $3, $7 FROM held
           ON CONFLICT (request_id) DO NOTHING
           RETURNING 1""",
        account_id,
        admission.amount,
        day,
        admission.request_id,
        admission.key_id,
        admission.fee_bps,
        admission.endpoint,
    )
    if held is None:
        return False
    await post(
        conn,
        "reserve",
        [
            (client_account(account_id), "reserve", -admission.amount),
            (reserved_account(account_id), "reserve", admission.amount),
        ],
        account_id,
        admission.request_id,
    )
    return True


async def take_back(conn: Conn, lease_id: str, admitted: int | None, status: str, account_id: str | None = None) -> int:
    """End an open lease: what its requests did not take goes back to the balance (and out of the lease's
    day); what they took (``admitted``, the router's word, at least what is recorded; ``None`` when the
    router is gone: what is recorded) stays held for reservations still on the way. How much went back;
    0 when the lease was not open. A lease billing never granted (its grant is still on the way, or was
    refused) is marked given back, with ``account_id``, so a grant arriving later is refused. Run inside a
    transaction."""
    row = await conn.fetchrow(
        """SELECT account_id::text AS account_id, granted, attached, released, spend_day, status
           FROM leases WHERE lease_id = $1 FOR UPDATE""",
        lease_id,
    )
    if row is None:
        if account_id is not None:
            await conn.execute(
                """INSERT INTO leases (lease_id, account_id, router_id, granted, spend_day, status)
                   SELECT $1, id, '', 0, (now() AT TIME ZONE 'UTC')::date, 'returned' FROM accounts WHERE id = $2
                   ON CONFLICT (lease_id) DO NOTHING""",
                uuid.UUID(lease_id),
                account_id,
            )
        return 0
    if row["status"] != "open":
        return 0
    kept = row["attached"] if admitted is None else min(row["granted"], max(admitted, row["attached"]))
    release = row["granted"] - kept - row["released"]
    await conn.execute(
        "UPDATE leases SET status = $2, released = released + $3, touched_at = now() WHERE lease_id = $1",
        lease_id,
        status,
        release,
    )
    await _release(conn, row["account_id"], row["spend_day"], lease_id, release)
    return int(release)


async def release_stranded(conn: Conn, lease_id: str) -> int:
    """Release what a given-back lease still keeps for admissions that never arrived (their router said it
    admitted them, then neither their batch nor their settlement came within the TTL): nothing stays held
    for ever. Admissions arriving later come from the balance (``reserve_unbacked``). Run inside a
    transaction."""
    row = await conn.fetchrow(
        """SELECT account_id::text AS account_id, granted, attached, released, spend_day
           FROM leases WHERE lease_id = $1 AND status <> 'open' FOR UPDATE""",
        lease_id,
    )
    if row is None:
        return 0
    release = row["granted"] - row["attached"] - row["released"]
    await conn.execute(
        "UPDATE leases SET status = 'expired', released = released + $2, touched_at = now() WHERE lease_id = $1",
        lease_id,
        release,
    )
    await _release(conn, row["account_id"], row["spend_day"], lease_id, release)
    return int(release)


async def _release(conn: Conn, account_id: str, spend_day: dt.date, lease_id: str, release: int) -> None:
    if release <= 0:
        return
    await conn.execute(
        """UPDATE accounts
           SET balance = balance + $2, reserved = reserved - $2,
               day_spend = CASE WHEN spend_day = $3 THEN greatest(0, day_spend - $2) ELSE day_spend END
           WHERE id = $1""",
        account_id,
        release,
        spend_day,
    )
    await post(
        conn,
        "lease_release",
        [(reserved_account(account_id), "release", -release), (client_account(account_id), "release", release)],
        account_id,
        lease_id,
    )
