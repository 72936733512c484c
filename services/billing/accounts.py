"""billing's account SQL beyond money movements: API keys of both kinds, and what a management key reads of
its account (keys, summary, usage per day, requests, routing records).

Every query that serves a management key is bounded by the account it was authenticated for: a key or request
of another account is answered as one that does not exist.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from libs.contracts.billing import INFERENCE, MANAGEMENT, AttemptRecord, GenerationRecord, KeyInfo, KeyKind
from libs.contracts.management import (
    AccountRequest,
    AccountRequestsQuery,
    AccountSummary,
    CreatedKey,
    DailyUsage,
    ManagedKey,
    ManagementKeyInfo,
    SetKeyLimits,
)
from libs.contracts.pricing import to_credits
from libs.platform.apikeys import MANAGEMENT_PREFIX, PREFIX, display_prefix, hash_key, new_key
from services.billing.leases import free_in_leases
from services.billing.repository import PoolBound


class NoSuchAccount(LookupError):
    """The account does not exist."""


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _digest(key_hash: str) -> bytes | None:
    try:
        return bytes.fromhex(key_hash)
    except ValueError:
        return None


def days_back(days: int, today: dt.date | None = None) -> list[dt.date]:
    """The last ``days`` UTC days, oldest first, today included."""
    end = today or dt.datetime.now(dt.UTC).date()
    return [end - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


# Every column of a managed key, with its last use (its latest admitted request, by the reservations_key index).
# What open credit leases hold beyond recorded requests: shown as balance (``free_in_leases``).
_FREE, _FREE_TODAY = free_in_leases("a")
_KEY_COLUMNS = """k.id, k.prefix, k.label, k.kind, k.rpm, k.tpm, k.created_at, k.revoked_at,
    (SELECT max(r.created_at) FROM reservations r WHERE r.key_id = k.id) AS last_used_at"""


def _managed(row: asyncpg.Record) -> ManagedKey:
    return ManagedKey(
        key_id=row["id"],
        prefix=row["prefix"],
        label=row["label"],
        kind=row["kind"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        created_at=row["created_at"].timestamp(),
        revoked_at=_epoch(row["revoked_at"]),
        last_used_at=_epoch(row["last_used_at"]),
    )


def generation_record(held: asyncpg.Record, attempts: list[asyncpg.Record]) -> GenerationRecord:
    """A request's routing record from its reservation and its usage records."""
    return GenerationRecord(
        id=held["request_id"],
        model=held["model"] or (attempts[-1]["model"] if attempts else None),
        endpoint=held["endpoint"],
        status=held["status"],
        created=int(held["created_at"].timestamp()),
        prompt_tokens=held["prompt_tokens"],
        completion_tokens=held["completion_tokens"],
        cost=to_credits(held["charged"]),
        usage_discrepancy=held["usage_discrepancy"],
        usage_verified=held["usage_verified"],
        attempts=[
            AttemptRecord(
                attempt=a["attempt"],
                hoster_id=str(a["hoster_id"]),
                model=a["model"],
                outcome=a["outcome"],
                prompt_tokens=a["prompt_tokens"],
                completion_tokens=a["completion_tokens"],
                ttft_ms=a["ttft_ms"],
                duration_ms=a["duration_ms"],
                error=a["error"],
                dropped_parameters=list(a["dropped_parameters"]),
                verification=a["verification"],
            )
            for a in attempts
        ],
    )


class Accounts(PoolBound):
    """API keys and the account as its management key sees it."""

    # Keys --------------------------------------------------------------------------------------------------

    async def create_key(
        self,
        account_id: str,
        rpm: int | None = None,
        tpm: int | None = None,
        kind: KeyKind = INFERENCE,
        label: str | None = None,
    ) -> CreatedKey:
        """A new key of ``kind`` for ``account_id``; the key itself is not stored and cannot be shown again."""
        key = new_key(MANAGEMENT_PREFIX if kind == MANAGEMENT else PREFIX)
        key_id = "key_" + uuid.uuid4().hex[:24]
        try:
            row = await self._pool.fetchrow(
                """INSERT INTO api_keys AS k (id, account_id, key_hash, prefix, rpm, tpm, kind, label)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   RETURNING k.*, NULL::timestamptz AS last_used_at""",
                key_id,
                account_id,
                bytes.fromhex(hash_key(key)),
                display_prefix(key),
                rpm,
                tpm,
                kind,
                label,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NoSuchAccount(f"no account {account_id}") from None
        assert row is not None
        return CreatedKey(key=key, info=_managed(row))

    async def revoke_key(self, key_id: str) -> str | None:
        """Revoke any account's key (the operator's command); its hash (hex), ``None`` when there is no such
        key. Ingress replicas stop accepting it within their cache time."""
        digest: bytes | None = await self._pool.fetchval(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING key_hash", key_id
        )
        return None if digest is None else digest.hex()

    async def verify_key(self, key_hash: str) -> KeyInfo:
        """Who holds the key with this hash, and of which kind."""
        digest = _digest(key_hash)
        if digest is None:
            return KeyInfo(status="unknown")
        row = await self._pool.fetchrow(
            "SELECT id, account_id::text, rpm, tpm, kind, revoked_at FROM api_keys WHERE key_hash = $1", digest
        )
        if row is None:
            return KeyInfo(status="unknown")
        return KeyInfo(
            status="revoked" if row["revoked_at"] else "valid",
            key_id=row["id"],
            account_id=row["account_id"],
            rpm=row["rpm"],
            tpm=row["tpm"],
            kind=row["kind"],
        )

    async def verify_management_key(self, key_hash: str) -> ManagementKeyInfo:
        """Whose management key has this hash; ``not_management`` for a valid inference key."""
        info = await self.verify_key(key_hash)
        if info.status == "valid" and info.kind != MANAGEMENT:
            return ManagementKeyInfo(status="not_management")
        return ManagementKeyInfo(status=info.status, key_id=info.key_id, account_id=info.account_id)

    async def keys(self, account_id: str) -> list[ManagedKey]:
        """Every key of the account, newest first, revoked ones included."""
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.account_id = $1 ORDER BY k.created_at DESC, k.id",
            account_id,
        )
        return [_managed(r) for r in rows]

    async def key(self, account_id: str, key_id: str) -> ManagedKey | None:
        """Key ``key_id`` if it is the account's."""
        row = await self._pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.id = $1 AND k.account_id = $2", key_id, account_id
        )
        return None if row is None else _managed(row)

    async def revoke_account_key(self, account_id: str, key_id: str) -> tuple[ManagedKey, str] | None:
        """Revoke key ``key_id`` if it is the account's (again: no change): the key and its hash (hex)."""
        row = await self._pool.fetchrow(
            f"""UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
                WHERE k.id = $1 AND k.account_id = $2
                RETURNING {_KEY_COLUMNS}, k.key_hash""",
            key_id,
            account_id,
        )
        return None if row is None else (_managed(row), bytes(row["key_hash"]).hex())

    async def update_key(self, change: SetKeyLimits) -> tuple[ManagedKey, str] | None:
        """Change the limits or label named in ``change.update`` of a key of the account: the key and its hash
        (hex); ``None`` when the account has no such key."""
        row = await self._pool.fetchrow(
            f"""UPDATE api_keys k SET
                    rpm = CASE WHEN 'rpm' = ANY($3::text[]) THEN $4 ELSE k.rpm END,
                    tpm = CASE WHEN 'tpm' = ANY($3::text[]) THEN $5 ELSE k.tpm END,
                    label = CASE WHEN 'label' = ANY($3::text[]) THEN $6 ELSE k.label END
                WHERE k.id = $1 AND k.account_id = $2
                RETURNING {_KEY_COLUMNS}, k.key_hash""",
            change.key_id,
            change.account_id,
            list(change.update),
            change.rpm,
            change.tpm,
            change.label,
        )
        return None if row is None else (_managed(row), bytes(row["key_hash"]).hex())

    # The account -------------------------------------------------------------------------------------------

    async def summary(self, account_id: str) -> AccountSummary | None:
        """The account's money now (``spent_today``: charges and open holds of this UTC day)."""
        row = await self._pool.fetchrow(
            f"""SELECT id::text, name, balance + {_FREE} AS balance, reserved - {_FREE} AS reserved, daily_cap,
                       created_at,
                       CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spend - {_FREE_TODAY}
                            ELSE 0 END AS spent
                FROM accounts a WHERE id = $1""",
            account_id,
        )
        if row is None:
            return None
        return AccountSummary(
            account_id=row["id"],
            name=row["name"],
            balance=row["balance"],
            reserved=row["reserved"],
            daily_cap=row["daily_cap"],
            spent_today=row["spent"],
            created_at=row["created_at"].timestamp(),
        )

    async def daily_usage(self, account_id: str, days: int, today: dt.date | None = None) -> list[DailyUsage]:
        """The account's requests per UTC day they were admitted, over the last ``days`` days (zeros included),
        oldest first; ``spend`` is what was charged."""
        window = days_back(days, today)
        rows = await self._pool.fetch(
            """SELECT spend_day, count(*) AS requests, sum(prompt_tokens)::bigint AS prompt,
                      sum(completion_tokens)::bigint AS completion, sum(charged)::bigint AS spend
               FROM reservations
               WHERE account_id = $1 AND spend_day >= $2 AND spend_day <= $3
                 AND created_at >= $2::date::timestamp AT TIME ZONE 'UTC'
               GROUP BY spend_day""",
            account_id,
            window[0],
            window[-1],
        )
        by_day = {r["spend_day"]: r for r in rows}
        out = []
        for day in window:
            r = by_day.get(day)
            out.append(
                DailyUsage(
                    day=day.isoformat(),
                    requests=r["requests"] if r else 0,
                    prompt_tokens=r["prompt"] if r else 0,
                    completion_tokens=r["completion"] if r else 0,
                    spend=r["spend"] if r else 0,
                )
            )
        return out

    async def requests(self, query: AccountRequestsQuery) -> list[AccountRequest]:
        """The account's requests, newest first, each with its last attempt (hoster, outcome, latency)."""
        before = None if query.before is None else dt.datetime.fromtimestamp(query.before, tz=dt.UTC)
        rows = await self._pool.fetch(
            """SELECT r.request_id, r.key_id, r.model, r.endpoint, r.status, r.prompt_tokens, r.completion_tokens,
                      r.charged, r.created_at, r.settled_at, a.hoster_id, a.outcome, a.ttft_ms, a.duration_ms,
                      a.attempt AS attempts, a.model AS attempt_model
               FROM reservations r
               LEFT JOIN LATERAL (
                   SELECT u.hoster_id, u.outcome, u.ttft_ms, u.duration_ms, u.attempt, u.model FROM usage_records u
                   WHERE u.request_id = r.request_id ORDER BY u.attempt DESC LIMIT 1) a ON true
               WHERE r.account_id = $1 AND ($2::timestamptz IS NULL OR r.created_at < $2)
                 AND ($3::text IS NULL OR r.key_id = $3)
               ORDER BY r.created_at DESC LIMIT $4""",
            query.account_id,
            before,
            query.key_id,
            query.limit,
        )
        return [_account_request(r) for r in rows]

    async def generation(self, account_id: str, request_id: str) -> GenerationRecord | None:
        """The routing record of ``request_id`` if the account made it, whichever of its keys."""
        held = await self._pool.fetchrow(
            "SELECT * FROM reservations WHERE request_id = $1 AND account_id = $2", request_id, account_id
        )
        return await self._record(held)

    async def key_generation(self, key_id: str, request_id: str) -> GenerationRecord | None:
        """The routing record of ``request_id``, only for the key that made it."""
        held = await self._pool.fetchrow(
            "SELECT * FROM reservations WHERE request_id = $1 AND key_id = $2", request_id, key_id
        )
        return await self._record(held)

    async def _record(self, held: asyncpg.Record | None) -> GenerationRecord | None:
        if held is None:
            return None
        attempts = await self._pool.fetch(
            "SELECT * FROM usage_records WHERE request_id = $1 ORDER BY attempt", held["request_id"]
        )
        return generation_record(held, attempts)


def _account_request(r: asyncpg.Record) -> AccountRequest:
    values: dict[str, Any] = {
        "request_id": r["request_id"],
        "key_id": r["key_id"],
        "model": r["model"] or r["attempt_model"],
        "endpoint": r["endpoint"],
        "status": r["status"],
        "outcome": r["outcome"],
        "hoster_id": None if r["hoster_id"] is None else str(r["hoster_id"]),
        "attempts": r["attempts"] or 0,
        "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"],
        "cost": r["charged"],
        "ttft_ms": r["ttft_ms"],
        "duration_ms": r["duration_ms"],
        "created_at": r["created_at"].timestamp(),
        "settled_at": _epoch(r["settled_at"]),
    }
    return AccountRequest(**values)
