"""``computeshare``: the operator's command line for accounts, keys, the ledger and hoster earnings.

Configuration comes from the same environment as the billing service; without it, the local stack of
``make run``. Every command prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from libs.contracts.pricing import MICRO
from libs.platform.apikeys import hash_key
from services.billing.ledger import AccountState, Ledger, NotFound
from services.billing.repository import apply_migrations
from services.billing.settings import BillingSettings

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/computeshare"


class CliSettings(BillingSettings):
    """The billing settings, defaulting to the local stack's database."""

    model_config = SettingsConfigDict(env_prefix="CS_BILLING_", populate_by_name=True, extra="ignore")

    database_url: SecretStr = SecretStr(LOCAL_DATABASE_URL)


def credits_arg(text: str) -> int:
    """Credits as typed (``12.5``) to micro-credits."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of credits") from None
    if value < 0:
        raise argparse.ArgumentTypeError("credits cannot be negative")
    return int(value * MICRO)


def _account_json(state: AccountState) -> dict[str, Any]:
    return {
        "id": state.id,
        "name": state.name,
        "balance": state.balance / MICRO,
        "reserved": state.reserved / MICRO,
        "spent_today": state.spent_today / MICRO,
        "daily_cap": None if state.daily_cap is None else state.daily_cap / MICRO,
    }


def _account_text(state: AccountState) -> str:
    data = _account_json(state)
    cap = "none" if data["daily_cap"] is None else f"{data['daily_cap']:.6f}"
    return (
        f"account {data['id']} ({data['name']})\n  balance     {data['balance']:.6f} credits\n"
        f"  reserved    {data['reserved']:.6f}\n  spent today {data['spent_today']:.6f}\n  daily cap   {cap}"
    )


async def _run(args: argparse.Namespace, ledger: Ledger) -> tuple[Any, str, int]:
    """Carry out one command: ``(json data, text, exit code)``."""
    if args.command == "account":
        if args.action == "create":
            state = await ledger.create_account(args.name, args.credits)
        elif args.action == "topup":
            state = await ledger.topup(args.account, args.amount)
        elif args.action == "set-limits":
            state = await ledger.set_daily_cap(args.account, None if args.no_daily_cap else args.daily_cap)
        else:
            state = await ledger.account(args.account)
        return _account_json(state), _account_text(state), 0
    if args.command == "key":
        if args.action == "create":
            key_id, key = await ledger.create_key(args.account, args.rpm, args.tpm)
            data = {"id": key_id, "key": key, "account": args.account, "rpm": args.rpm, "tpm": args.tpm}
            return data, f"key {key_id}\n{key}\n(shown once: store it now)", 0
        if args.action == "find":
            info = await ledger.verify_key(hash_key(args.key))
            return info.model_dump(), f"{info.status} {info.key_id or ''} {info.account_id or ''}".strip(), 0
        await ledger.revoke_key(args.key_id)
        return {"id": args.key_id, "revoked": True}, f"key {args.key_id} revoked", 0
    if args.command == "ledger":
        problems = await ledger.check()
        text = "ledger balanced" if not problems else "\n".join(["ledger NOT balanced:", *problems])
        return {"ok": not problems, "problems": problems}, text, 0 if not problems else 1
    rows = await ledger.hoster_earnings(args.hoster)
    earned = [{"hoster": r["hoster_id"], "earned": r["earned"] / MICRO, "entries": r["entries"]} for r in rows]
    text = "\n".join(f"{e['hoster']}  {e['earned']:.6f} credits" for e in earned) or "no earnings yet"
    return earned, text, 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    root = argparse.ArgumentParser(prog="computeshare", description=__doc__)
    root.add_argument("--json", action="store_true", help="print JSON")
    commands = root.add_subparsers(dest="command", required=True)

    account = commands.add_parser("account", help="accounts and credits").add_subparsers(dest="action", required=True)
    create = account.add_parser("create", help="create an account")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=credits_arg, default=0, help="initial credits")
    topup = account.add_parser("topup", help="add credits")
    topup.add_argument("account")
    topup.add_argument("amount", type=credits_arg)
    show = account.add_parser("show", help="balance, reservations, today's spend")
    show.add_argument("account")
    limits = account.add_parser("set-limits", help="set the daily spend cap")
    limits.add_argument("account")
    cap = limits.add_mutually_exclusive_group(required=True)
    cap.add_argument("--daily-cap", type=credits_arg, help="credits per UTC day")
    cap.add_argument("--no-daily-cap", action="store_true", help="remove the cap")

    key = commands.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    key_create = key.add_parser("create", help="create a key (shown once)")
    key_create.add_argument("account")
    key_create.add_argument("--rpm", type=int, help="requests per minute")
    key_create.add_argument("--tpm", type=int, help="tokens per minute")
    find = key.add_parser("find", help="whose key this is, and whether it is valid")
    find.add_argument("key")
    revoke = key.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")

    ledger = commands.add_parser("ledger", help="the double-entry ledger").add_subparsers(dest="action", required=True)
    ledger.add_parser("check", help="prove every balance equals the sum of its entries")

    hoster = commands.add_parser("hoster", help="hosters").add_subparsers(dest="action", required=True)
    earnings = hoster.add_parser("earnings", help="what hosters earned")
    earnings.add_argument("hoster", nargs="?")
    return root


async def run(argv: list[str], settings: CliSettings | None = None) -> int:
    """Parse ``argv``, carry out the command against the database, print the result; the exit code."""
    args = parser().parse_args(argv)
    settings = settings or CliSettings()
    try:
        pool = await asyncpg.create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"computeshare: cannot reach the billing database: {exc}", file=sys.stderr)
        return 2
    try:
        await apply_migrations(pool)
        data, text, code = await _run(args, Ledger(pool))
    except NotFound as exc:
        print(json.dumps({"error": str(exc)}) if args.json else f"computeshare: {exc}", file=sys.stderr)
        return 1
    except (ValueError, asyncpg.DataError) as exc:
        print(json.dumps({"error": str(exc)}) if args.json else f"computeshare: {exc}", file=sys.stderr)
        return 2
    finally:
        await pool.close()
    print(json.dumps(data) if args.json else text)
    return code


def main() -> None:
    """Entry point of the ``computeshare`` command."""
    sys.exit(asyncio.run(run(sys.argv[1:])))


if __name__ == "__main__":
    main()
