"""The double-entry books' names and their one write: a balanced ledger transaction."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Entry = tuple[str, str, int]  # (ledger account, entry kind, amount)
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


def client_account(account_id: str) -> str:
    """Ledger account of what a client can spend."""
    return f"client:{account_id}"


def reserved_account(account_id: str) -> str:
    """Ledger account of what a client's open requests hold."""
    return f"reserved:{account_id}"


def hoster_account(hoster_id: str) -> str:
    """Ledger account of a hoster's earnings."""
    return f"hoster:{hoster_id}"


PLATFORM_FEES = "platform:fees"
TOPUPS = "external:topups"


async def post(conn: Conn, kind: str, entries: list[Entry], account_id: str | None, request_id: str | None) -> None:
    """Write one balanced ledger transaction (zero-amount lines are left out)."""
    lines = [e for e in entries if e[2] != 0]
    if sum(amount for _, _, amount in lines) != 0:
        raise ValueError(f"unbalanced ledger transaction {kind}: {lines}")
    # One statement, one round trip: the transaction row and its lines.
    await conn.execute(
        """WITH tx AS (
               INSERT INTO ledger_transactions (kind, request_id, account_id) VALUES ($1, $2, $3) RETURNING id)
           INSERT INTO ledger_entries (tx_id, ledger_account, kind, amount)
           SELECT tx.id, line.account, line.kind, line.amount
           FROM tx, unnest($4::text[], $5::text[], $6::bigint[]) WITH ORDINALITY AS line (account, kind, amount, n)
           ORDER BY line.n""",
        kind,
        request_id,
        account_id,
        [account for account, _, _ in lines],
        [entry_kind for _, entry_kind, _ in lines],
        [amount for _, _, amount in lines],
    )
