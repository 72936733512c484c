"""billing's SQL: versioned migrations and the usage records."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any

import asyncpg

from libs.contracts.billing import DispatchRecord, RequestFinished
from libs.contracts.hosters import HosterRegistrations, RegisteredHoster, hoster_uuid
from libs.contracts.management import (
    HosterAttempt,
    HosterAttemptsQuery,
    HosterDailyReport,
    HosterDay,
    HosterTokenInfo,
)

# Any fixed number: every billing replica takes this advisory lock while migrating, so one migrates at a time.
_MIGRATION_LOCK = 0x6353_6269_6C6C


def migration_files() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration shipped with the service, in order."""
    folder = resources.files("services.billing") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError("two migrations share a version number")
    return found


async def apply_migrations(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    applied_now = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


# The largest count an integer column holds.
_INT_MAX = 2**31 - 1


def _count(reported: int) -> int:
    """A hoster's reported count as a record can hold it: never below zero, never past the column (what was
    billed is the router's bounded figure, on the request; this is what the hoster said, within reason)."""
    return min(max(reported, 0), _INT_MAX)


class PoolBound:
    """SQL over a pool that may be attached after construction: the app builds its handlers before its
    lifespan opens the pool."""

    def __init__(self, pool: asyncpg.Pool | None = None) -> None:
        self._pool_ref = pool

    def attach(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` from now on."""
        self._pool_ref = pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool, for another repository over the same database."""
        return self._pool

    @property
    def _pool(self) -> asyncpg.Pool:
        if self._pool_ref is None:
            raise RuntimeError(f"{type(self).__name__} has no database pool yet")
        return self._pool_ref


RECORD = """INSERT INTO usage_records (
        request_id, attempt, hoster_id, adapter_id, model, stream, outcome,
        prompt_tokens, completion_tokens, usage_estimated, input_price, output_price,
        finish_reason, error, ttft_ms, duration_ms, finished_at, dropped_parameters, chunks_sent, verification)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
    ON CONFLICT (request_id, attempt, hoster_id) DO NOTHING"""


def record_args(request_id: str, record: DispatchRecord) -> tuple[Any, ...]:
    """``RECORD``'s arguments for one attempt of a settled request, as its router recorded it."""
    return (
        request_id,
        record.attempt,
        record.hoster_id,
        record.adapter_id,
        record.model,
        record.stream,
        record.outcome,
        _count(record.prompt_tokens),
        _count(record.completion_tokens),
        record.usage_estimated,
        record.input_price,
        record.output_price,
        record.finish_reason,
        record.error,
        record.ttft_ms,
        record.duration_ms,
        dt.datetime.fromtimestamp(record.finished_at, tz=dt.UTC),
        record.dropped_parameters,
        record.chunks_sent,
        record.verification,
    )


def records_of(events: list[RequestFinished]) -> list[tuple[Any, ...]]:
    """``RECORD``'s arguments for every attempt record of ``events``."""
    return [record_args(event.request_id, record) for event in events for record in event.records]


class HosterNameTaken(ValueError):
    """Another live (not revoked) hoster is registered under this name, compared case-insensitively."""


# The unique index (migration 0010) on live hosters' lower(name).
_LIVE_NAME_INDEX = "hosters_live_name"


def refuse_unusable_name(name: str) -> None:
    """Raise ``ValueError`` for a name clients could not pick the hoster by: a blank one, or one shaped like a
    UUID (clients' UUIDs only ever name hoster ids, so such a name would never match, or would look like
    another hoster's id in listings)."""
    if not name.strip():
        raise ValueError("a hoster's name cannot be blank")
    if hoster_uuid(name) is not None:
        raise ValueError(f"{name!r} is shaped like a UUID, which names hoster ids only: choose another name")


class HosterRepository(PoolBound):
    """Registered hosters: who they are, where their earnings go, which NATS user is theirs. A live hoster's
    name is unique, compared case-insensitively (PostgreSQL enforces it); a revoked one's is free again."""

    async def check_name(self, name: str) -> None:
        """Raise ``ValueError`` (``HosterNameTaken`` when a live hoster has it) unless ``name`` can be
        registered now. ``register`` still enforces it: two registrations may pass this check at once."""
        refuse_unusable_name(name)
        taken = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM hosters WHERE revoked_at IS NULL AND lower(name) = lower($1))", name
        )
        if taken:
            raise HosterNameTaken(f"a live hoster is registered as {name!r} (names ignore case): choose another")

    async def register(
        self,
        hoster_id: str,
        name: str,
        region: str | None,
        cloud: bool,
        account_id: str,
        nats_public_key: str,
        console_token_hash: str | None = None,
    ) -> None:
        """Record a new hoster (with the SHA-256, hex, of its console token); ``HosterNameTaken`` when a live
        hoster already has the name, ``ValueError`` when it is unusable (``refuse_unusable_name``)."""
        refuse_unusable_name(name)
        try:
            await self._pool.execute(
                """INSERT INTO hosters (id, name, region, cloud, account_id, nats_public_key, console_token_hash)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                hoster_id,
                name,
                region,
                cloud,
                account_id,
                nats_public_key,
                None if console_token_hash is None else bytes.fromhex(console_token_hash),
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != _LIVE_NAME_INDEX:
                raise
            raise HosterNameTaken(
                f"a live hoster is registered as {name!r} (names ignore case): choose another"
            ) from None

    async def verify_console_token(self, token_hash: str) -> HosterTokenInfo:
        """Whose console token has this SHA-256 (hex); a revoked hoster's token is ``revoked``."""
        try:
            digest = bytes.fromhex(token_hash)
        except ValueError:
            return HosterTokenInfo(status="unknown")
        row = await self._pool.fetchrow(
            "SELECT id::text, name, revoked_at FROM hosters WHERE console_token_hash = $1", digest
        )
        if row is None:
            return HosterTokenInfo(status="unknown")
        return HosterTokenInfo(
            status="revoked" if row["revoked_at"] else "valid", hoster_id=row["id"], name=row["name"]
        )

    async def daily(self, hoster_id: str, days: int, today: dt.date | None = None) -> HosterDailyReport:
        """The hoster's attempts (by the UTC day they finished) and earnings (by the UTC day of their ledger
        entries) over the last ``days`` days, oldest first, zeros included; and all it ever earned."""
        end = today or dt.datetime.now(dt.UTC).date()
        window = [end - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
        start = dt.datetime.combine(window[0], dt.time(), tzinfo=dt.UTC)
        attempts = await self._pool.fetch(
            """SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, count(*) AS attempts,
                      count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE outcome = 'failed') AS failed,
                      sum(prompt_tokens)::bigint AS prompt, sum(completion_tokens)::bigint AS completion
               FROM usage_records WHERE hoster_id = $1 AND finished_at >= $2 GROUP BY 1""",
            hoster_id,
            start,
        )
        account = "hoster:" + hoster_id
        earned = await self._pool.fetch(
            """SELECT (created_at AT TIME ZONE 'UTC')::date AS day, sum(amount)::bigint AS earned
               FROM ledger_entries WHERE ledger_account = $1 AND created_at >= $2 GROUP BY 1""",
            account,
            start,
        )
        total = await self._pool.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM ledger_entries WHERE ledger_account = $1", account
        )
        by_day = {r["day"]: r for r in attempts}
        money = {r["day"]: r["earned"] for r in earned}
        return HosterDailyReport(
            days=[
                HosterDay(
                    day=day.isoformat(),
                    attempts=by_day[day]["attempts"] if day in by_day else 0,
                    succeeded=by_day[day]["succeeded"] if day in by_day else 0,
                    failed=by_day[day]["failed"] if day in by_day else 0,
                    prompt_tokens=by_day[day]["prompt"] if day in by_day else 0,
                    completion_tokens=by_day[day]["completion"] if day in by_day else 0,
                    earned=money.get(day, 0),
                )
                for day in window
            ],
            earned_total=total,
        )

    async def attempts(self, query: HosterAttemptsQuery) -> list[HosterAttempt]:
        """The hoster's attempts, newest first, each with its request's usage discrepancy when it had one."""
        before = None if query.before is None else dt.datetime.fromtimestamp(query.before, tz=dt.UTC)
        rows = await self._pool.fetch(
            """SELECT u.*, r.usage_discrepancy
               FROM usage_records u LEFT JOIN reservations r ON r.request_id = u.request_id
               WHERE u.hoster_id = $1 AND ($2::timestamptz IS NULL OR u.finished_at < $2)
               ORDER BY u.finished_at DESC LIMIT $3""",
            query.hoster_id,
            before,
            query.limit,
        )
        return [
            HosterAttempt(
                request_id=r["request_id"],
                attempt=r["attempt"],
                model=r["model"],
                outcome=r["outcome"],
                stream=r["stream"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                usage_estimated=r["usage_estimated"],
                ttft_ms=r["ttft_ms"],
                duration_ms=r["duration_ms"],
                error=r["error"],
                finished_at=r["finished_at"].timestamp(),
                usage_discrepancy=attempt_discrepancy(r["usage_discrepancy"], r["attempt"], str(r["hoster_id"])),
            )
            for r in rows
        ]

    async def revoke(self, hoster_id: str) -> asyncpg.Record | None:
        """Mark a hoster revoked (once); its row, or ``None`` when there is no such hoster."""
        row: asyncpg.Record | None = await self._pool.fetchrow(
            """UPDATE hosters SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *""", hoster_id
        )
        return row

    async def all(self) -> list[asyncpg.Record]:
        """Every registered hoster with its earnings (micro-credits) and attempts recorded."""
        return await self._pool.fetch(
            """SELECT h.*,
                      coalesce((SELECT sum(amount) FROM ledger_entries
                                WHERE ledger_account = 'hoster:' || h.id::text), 0)::bigint AS earned,
                      (SELECT count(*) FROM usage_records u WHERE u.hoster_id = h.id) AS attempts
               FROM hosters h ORDER BY h.created_at"""
        )

    async def registrations(self) -> HosterRegistrations:
        """The registered hosters as routing believes them."""
        rows = await self._pool.fetch("SELECT id, name, region, cloud, revoked_at FROM hosters")
        return HosterRegistrations(
            hosters=[
                RegisteredHoster(
                    hoster_id=str(r["id"]),
                    name=r["name"],
                    region=r["region"],
                    cloud=r["cloud"],
                    revoked=r["revoked_at"] is not None,
                )
                for r in rows
            ]
        )


def attempt_discrepancy(request_discrepancy: str | None, attempt: int, hoster_id: str) -> str | None:
    """One attempt's part of its request's usage discrepancy (``attempt N (hoster): ...; attempt M ...``, as
    settlement writes it), so a hoster reads its own and never another hoster's."""
    if not request_discrepancy:
        return None
    mark = f"attempt {attempt} ({hoster_id}): "
    start = request_discrepancy.find(mark)
    if start < 0:
        return None
    start += len(mark)
    end = request_discrepancy.find("; attempt ", start)
    return request_discrepancy[start:] if end < 0 else request_discrepancy[start:end]
