"""``computeshare``: the operator's command line for accounts, keys, the ledger and hoster earnings.

Configuration comes from the same environment as the billing service; without it, the local stack of
``make run``. Every command prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.contracts import subjects
from libs.contracts.billing import INFERENCE, MANAGEMENT
from libs.contracts.hosters import LiveHoster, LiveHosters
from libs.contracts.pricing import MICRO
from libs.platform.apikeys import HOSTER_TOKEN_PREFIX, hash_key, new_key
from libs.platform.natsauth import AuthStore, push_account_update, service_creds
from libs.tokens.gguf_import import tokenizer_files_from_gguf
from services.billing import durable
from services.billing.accounts import Accounts, NoSuchAccount
from services.billing.ledger import AccountState, Ledger, NotFound
from services.billing.repository import HosterRepository, apply_migrations
from services.billing.settings import BillingSettings
from services.billing.tokenizers import ModelRegistry, Registration, read_tokenizer_files

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/computeshare"


LOCAL_AUTH_DIR = Path(__file__).resolve().parents[2] / ".computeshare" / "nats-auth"


class CliSettings(BillingSettings):
    """The billing settings, defaulting to the local stack's database and NATS authority."""

    model_config = SettingsConfigDict(env_prefix="CS_BILLING_", populate_by_name=True, extra="ignore")

    database_url: SecretStr = SecretStr(LOCAL_DATABASE_URL)
    # The NATS authority (operator and account keys) that mints hosters' credentials and revokes them.
    nats_auth_dir: Path = Field(LOCAL_AUTH_DIR, validation_alias="CS_NATS_AUTH_DIR")


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


async def _run(args: argparse.Namespace, ledger: Ledger, settings: CliSettings) -> tuple[Any, str, int]:
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
        return await key_command(args, Accounts(ledger.pool))
    if args.command == "model":
        return await model_command(args, ModelRegistry(ledger.pool))
    if args.command == "ledger":
        problems = await ledger.check()
        text = "ledger balanced" if not problems else "\n".join(["ledger NOT balanced:", *problems])
        return {"ok": not problems, "problems": problems}, text, 0 if not problems else 1
    if args.action == "earnings":
        rows = await ledger.hoster_earnings(args.hoster)
        earned = [{"hoster": r["hoster_id"], "earned": r["earned"] / MICRO, "entries": r["entries"]} for r in rows]
        text = "\n".join(f"{e['hoster']}  {e['earned']:.6f} credits" for e in earned) or "no earnings yet"
        return earned, text, 0
    return await hoster_command(args, ledger, settings)


async def key_command(args: argparse.Namespace, accounts: Accounts) -> tuple[Any, str, int]:
    """``key create``, ``list``, ``find`` and ``revoke``."""
    if args.action == "create":
        kind = MANAGEMENT if args.management else INFERENCE
        try:
            created = await accounts.create_key(args.account, args.rpm, args.tpm, kind=kind, label=args.label)
        except NoSuchAccount as exc:
            raise NotFound(str(exc)) from None
        data = {"id": created.info.key_id, "key": created.key, "account": args.account, "kind": kind,
                "label": args.label, "rpm": args.rpm, "tpm": args.tpm}  # fmt: skip
        return data, f"{kind} key {created.info.key_id}\n{created.key}\n(shown once: store it now)", 0
    if args.action == "list":
        if await accounts.summary(args.account) is None:
            raise NotFound(f"no account {args.account}")
        keys = await accounts.keys(args.account)
        listing = [k.model_dump() for k in keys]
        lines = [
            f"{k.key_id}  {k.prefix}  {k.kind:<10} {'revoked' if k.revoked_at else 'valid':<7}"
            f"  rpm {k.rpm or '-'}  tpm {k.tpm or '-'}  {k.label or ''}".rstrip()
            for k in keys
        ]
        return listing, "\n".join(lines) or "no keys", 0
    if args.action == "find":
        info = await accounts.verify_key(hash_key(args.key))
        text = f"{info.status} {info.kind if info.key_id else ''} {info.key_id or ''} {info.account_id or ''}"
        return info.model_dump(), " ".join(text.split()), 0
    if await accounts.revoke_key(args.key_id) is None:
        raise NotFound(f"no key {args.key_id}")
    return {"id": args.key_id, "revoked": True}, f"key {args.key_id} revoked", 0


def _registration_json(r: Registration) -> dict[str, Any]:
    return {"model": r.model, "version": r.version, "tokenizer_sha256": r.tokenizer_sha256,
            "config_sha256": r.config_sha256, "vocab_size": r.vocab_size, "has_chat_template": r.has_chat_template,
            "source": r.source, "registered_at": r.registered_at.timestamp(),
            "max_tokens_per_s": r.max_tokens_per_s}  # fmt: skip


def _speed_bound(r: Registration) -> str:
    return f"{r.max_tokens_per_s:g} tok/s" if r.max_tokens_per_s is not None else "default"


async def model_command(args: argparse.Namespace, registry: ModelRegistry) -> tuple[Any, str, int]:
    """``model register`` (from the two Hugging Face files or a GGUF) and ``model list``."""
    if args.action == "register":
        if args.from_gguf is not None:
            if args.tokenizer is not None or args.tokenizer_config is not None:
                raise ValueError("--from-gguf takes the tokenizer from the GGUF: give it alone")
            files, source = await asyncio.to_thread(tokenizer_files_from_gguf, args.from_gguf), "gguf"
        elif args.tokenizer is not None and args.tokenizer_config is not None:
            files, source = read_tokenizer_files(args.tokenizer, args.tokenizer_config), "files"
        else:
            raise ValueError("give --tokenizer and --tokenizer-config, or --from-gguf")
        registered = await registry.register(args.name, files, source, args.max_tokens_per_s)
        data = {**_registration_json(registered), "previous_version": registered.previous_version,
                "changed": registered.changed}  # fmt: skip
        if not registered.changed:
            text = f"model {registered.model} already has these files (version {registered.version}): unchanged"
        else:
            replaced = f", replacing version {registered.previous_version}" if registered.previous_version else ""
            text = (f"model {registered.model} version {registered.version}{replaced}\n"
                    f"  tokenizer.json        {registered.tokenizer_sha256}\n"
                    f"  tokenizer_config.json {registered.config_sha256}\n"
                    f"  vocabulary {registered.vocab_size}, chat template "
                    f"{'yes' if registered.has_chat_template else 'none'}, speed bound "
                    f"{_speed_bound(registered)}")  # fmt: skip
        return data, text, 0
    if args.action == "reference":
        ids = await registry.set_references(args.name, args.hoster or [])
        text = (
            f"model {args.name}: reference hosters {', '.join(ids)}"
            if ids
            else (f"model {args.name}: no reference hoster (its hosters are checked against each other)")
        )
        return {"model": args.name, "reference_hosters": ids}, text, 0
    models = await registry.current()
    references = await registry.references()
    lines = [
        f"{m.model:<32} v{m.version:<3} tokenizer {m.tokenizer_sha256[:12]}  config {m.config_sha256[:12]}"
        f"  vocab {m.vocab_size:<7} template {'yes' if m.has_chat_template else 'no ':<3}"
        f"  bound {_speed_bound(m):<16} {m.registered_at.isoformat(timespec='seconds')}"
        f"  reference {','.join(references.get(m.model, [])) or '-'}"
        for m in models
    ]
    listing = [{**_registration_json(m), "reference_hosters": references.get(m.model, [])} for m in models]
    return listing, "\n".join(lines) or "no models registered", 0


async def hoster_command(args: argparse.Namespace, ledger: Ledger, settings: CliSettings) -> tuple[Any, str, int]:
    """``hoster register``, ``list`` and ``revoke``."""
    hosters = HosterRepository(ledger.pool)
    auth = AuthStore(settings.nats_auth_dir)
    if args.action == "register":
        if not auth.exists:
            raise ValueError(f"no NATS authority in {settings.nats_auth_dir} (set CS_NATS_AUTH_DIR)")
        hoster_id = str(uuid.uuid4())
        creds_path = args.creds or Path(f"{args.name}.creds")
        if creds_path.exists():
            raise ValueError(f"{creds_path} exists: credentials are written once, choose another --creds path")
        # Before anything is created; the insert below refuses it again should another registration race us.
        await hosters.check_name(args.name)
        account_id = args.account or (await ledger.create_account(f"hoster {args.name}", 0)).id
        await ledger.account(account_id)  # the earnings account must exist
        public_key, creds = auth.mint_hoster(hoster_id, args.name)
        console_token = new_key(HOSTER_TOKEN_PREFIX)
        await hosters.register(
            hoster_id, args.name, args.region, args.cloud, account_id, public_key, hash_key(console_token)
        )
        auth.write_creds(creds_path, creds)
        data = {"id": hoster_id, "name": args.name, "region": args.region, "cloud": args.cloud,
                "account": account_id, "creds": str(creds_path.resolve()), "console_token": console_token}  # fmt: skip
        text = (f"hoster {hoster_id} ({args.name})\n  earnings account {account_id}\n"
                f"  credentials      {creds_path} (written once: keep it secret)\n"
                f"  console token    {console_token} (shown once: the hoster's web console sign-in)")  # fmt: skip
        return data, text, 0
    if args.action == "revoke":
        row = await hosters.revoke(args.hoster)
        if row is None:
            raise NotFound(f"no hoster {args.hoster}")
        auth.revoke(row["nats_public_key"])
        await push_account_update(settings.nats_url, auth)
        return {"id": args.hoster, "revoked": True}, f"hoster {args.hoster} revoked and disconnected", 0
    live = await _live_hosters(settings, auth)
    listing = []
    for row in await hosters.all():
        hoster_id = str(row["id"])
        seen = live.get(hoster_id) if live is not None else None
        listing.append(
            {
                "id": hoster_id,
                "name": row["name"],
                "region": row["region"],
                "cloud": row["cloud"],
                "revoked": row["revoked_at"] is not None,
                "live": None if live is None else bool(seen and seen.live),
                "models": seen.models if seen else [],
                "trust": seen.trust if seen else None,
                "cooling": seen.cooling if seen else None,
                "earned": row["earned"] / MICRO,
                "attempts": row["attempts"],
                "usage_discrepancies": seen.usage_discrepancies if seen else None,
                "implausible_speeds": seen.implausible_speeds if seen else None,
                # Spot checks: its verdict per model it serves (verified, failed, unchecked).
                "verifications": seen.verifications if seen else {},
            }
        )
    lines = [
        f"{h['id']}  {h['name']:<16} {'revoked' if h['revoked'] else 'live' if h['live'] else 'offline'}"
        f"  trust {h['trust'] if h['trust'] is not None else '-'}  earned {h['earned']:.6f}"
        f"  usage discrepancies {h['usage_discrepancies'] if h['usage_discrepancies'] is not None else '-'}"
        f"  implausible speeds {h['implausible_speeds'] if h['implausible_speeds'] is not None else '-'}"
        f"  models {','.join(h['models']) or '-'}"
        f"  verified {','.join(f'{m}:{v}' for m, v in h['verifications'].items()) or '-'}"
        for h in listing
    ]
    return listing, "\n".join(lines) or "no hosters registered", 0


async def _live_hosters(settings: CliSettings, auth: AuthStore) -> dict[str, LiveHoster] | None:
    """What the routers see of the hosters now; ``None`` when NATS or every router is unreachable."""
    if not auth.exists:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".creds") as creds:
        creds.write(auth.mint_user("computeshare-cli", None)[1])
        creds.flush()
        try:
            nc = await nats.connect(settings.nats_url.split(","), user_credentials=creds.name, connect_timeout=2,
                                    allow_reconnect=False)  # fmt: skip
        except Exception:
            return None
        try:
            reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=2)
        except Exception:
            return None
        finally:
            await nc.close()
    return {h.hoster_id: h for h in LiveHosters.model_validate_json(reply.data).hosters}


@contextlib.asynccontextmanager
async def _operator_connection(settings: CliSettings) -> AsyncIterator[NatsClient]:
    """A NATS connection with credentials minted for this command from the deployment's authority."""
    auth = AuthStore(settings.nats_auth_dir)
    if not auth.exists:
        raise LookupError(f"no NATS authority in {settings.nats_auth_dir} (set CS_NATS_AUTH_DIR)")
    with tempfile.NamedTemporaryFile("w", suffix=".creds") as creds:
        creds.write(auth.mint_user("computeshare-cli", None)[1])
        creds.flush()
        nc = await nats.connect(settings.nats_url.split(","), user_credentials=creds.name, connect_timeout=2,
                                allow_reconnect=False)  # fmt: skip
        try:
            yield nc
        finally:
            await nc.close()


async def dead_letters(settings: CliSettings, action: str, seq: int | None) -> tuple[Any, str]:
    """``list`` the DEADLETTER stream, or ``replay`` event ``seq``: publish it on its original subject again
    (under a new message id, so the stream's duplicate window does not drop it) and delete it here."""
    async with _operator_connection(settings) as nc:
        js = nc.jetstream()
        if action == "replay":
            assert seq is not None
            try:
                letter = await js.get_msg(subjects.DEADLETTER_STREAM, seq)
            except nats.js.errors.NotFoundError:
                raise LookupError(f"no dead letter {seq}") from None
            headers = letter.headers or {}
            subject = headers.get(durable.ORIGINAL_SUBJECT)
            if not subject:
                raise LookupError(f"dead letter {seq} does not say where it came from")
            await js.publish(subject, letter.data or b"", headers={"Nats-Msg-Id": f"replay:{seq}:{time.time_ns()}"})
            await js.delete_msg(subjects.DEADLETTER_STREAM, seq)
            return {"replayed": seq, "subject": subject}, f"replayed {seq} to {subject}"
        info = await js.stream_info(subjects.DEADLETTER_STREAM)
        letters = []
        for number in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            try:
                letter = await js.get_msg(subjects.DEADLETTER_STREAM, number)
            except nats.js.errors.NotFoundError:
                continue  # replayed
            headers = letter.headers or {}
            letters.append(
                {
                    "seq": number,
                    "consumer": (letter.subject or "").rsplit(".", 1)[-1],
                    "subject": headers.get(durable.ORIGINAL_SUBJECT),
                    "deliveries": int(headers.get(durable.DELIVERIES, "0")),
                    "error": headers.get(durable.FAILURE),
                    "failed_at": float(headers.get(durable.FAILED_AT, "0")),
                    "body": (letter.data or b"").decode(errors="replace")[:2000],
                }
            )
        text = "\n".join(f"{d['seq']}  {d['consumer']:<17} {d['subject']}  after {d['deliveries']}: {d['error']}"
                         for d in letters)  # fmt: skip
        return letters, text or "no dead letters"


def parser() -> argparse.ArgumentParser:
    """The command line; ``--json`` is taken before or after the subcommand."""
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    root = argparse.ArgumentParser(prog="computeshare", description=__doc__)
    root.add_argument("--json", action="store_true", help="print JSON")
    commands = root.add_subparsers(dest="command", required=True)

    def group(name: str, help_text: str) -> Any:
        return commands.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)

    def command(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text, parents=[json_flag])
        return sub

    account = group("account", "accounts and credits")
    create = command(account, "create", "create an account")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=credits_arg, default=0, help="initial credits")
    topup = command(account, "topup", "add credits")
    topup.add_argument("account")
    topup.add_argument("amount", type=credits_arg)
    show = command(account, "show", "balance, reservations, today's spend")
    show.add_argument("account")
    limits = command(account, "set-limits", "set the daily spend cap")
    limits.add_argument("account")
    cap = limits.add_mutually_exclusive_group(required=True)
    cap.add_argument("--daily-cap", type=credits_arg, help="credits per UTC day")
    cap.add_argument("--no-daily-cap", action="store_true", help="remove the cap")

    key = group("key", "API keys")
    key_create = command(key, "create", "create a key (shown once)")
    key_create.add_argument("account")
    key_create.add_argument("--rpm", type=int, help="requests per minute")
    key_create.add_argument("--tpm", type=int, help="tokens per minute")
    key_create.add_argument("--label", help="a name for the key, shown in listings")
    key_create.add_argument(
        "--management", action="store_true", help="a management key: manages the account's keys, never calls models"
    )
    key_list = command(key, "list", "every key of an account: kind, limits, revoked or not, last use")
    key_list.add_argument("account")
    find = command(key, "find", "whose key this is, and whether it is valid")
    find.add_argument("key")
    revoke = command(key, "revoke", "revoke a key")
    revoke.add_argument("key_id")

    model = group("model", "the model registry: each model's tokenizer, for counting tokens as the model does")
    model_register = command(model, "register", "register (or replace) a model's tokenizer")
    model_register.add_argument("name", help="the model's name on the network, as clients write it in `model`")
    model_register.add_argument("--tokenizer", type=Path, help="its Hugging Face tokenizer.json")
    model_register.add_argument("--tokenizer-config", type=Path, help="its tokenizer_config.json")
    model_register.add_argument(
        "--from-gguf", type=Path, help="take both from a GGUF's tokenizer (byte-level BPE) and chat template"
    )
    model_register.add_argument(
        "--max-tokens-per-s",
        type=float,
        help="the fastest a hoster can plausibly generate this model, tokens per second (default: the router's"
        " CS_ROUTER_MAX_TOKENS_PER_S); an attempt measured past it is flagged and not used to rank",
    )
    command(model, "list", "every registered model: SHA-256s, vocabulary size, chat template, when registered")
    reference = command(model, "reference", "designate the hosters serving a model's reference weights (spot checks)")
    reference.add_argument("name", help="a registered model")
    reference.add_argument(
        "--hoster",
        action="append",
        help="a registered hoster (id or name) running the operator's own deployment"
        " of the weights; repeat for more; none: the model's hosters are checked against each other",
    )

    ledger = group("ledger", "the double-entry ledger")
    command(ledger, "check", "prove every balance equals the sum of its entries")

    hoster = group("hoster", "hosters: register, list, revoke, earnings")
    register = command(hoster, "register", "register a hoster and write its NATS credentials file (once)")
    register.add_argument(
        "--name", required=True, help="unique among live hosters, whatever the case; not shaped like a UUID"
    )
    register.add_argument("--region")
    register.add_argument("--cloud", action="store_true", help="a cloud provider (never used in privacy_mode)")
    register.add_argument("--account", help="the earnings account (default: a new one)")
    register.add_argument("--creds", type=Path, help="where to write the credentials (default: NAME.creds)")
    command(hoster, "list", "every hoster: live or not, models, trust, earnings")
    hoster_revoke = command(hoster, "revoke", "revoke a hoster: cut off now, never let back in")
    hoster_revoke.add_argument("hoster")
    earnings = command(hoster, "earnings", "what hosters earned")
    earnings.add_argument("hoster", nargs="?")

    deadletter = group("deadletter", "usage events billing gave up on")
    command(deadletter, "list", "every dead-lettered event: where it came from, why it failed")
    replay = command(deadletter, "replay", "send a dead-lettered event to billing again (and drop it from here)")
    replay.add_argument("seq", type=int, help="its number in `deadletter list`")

    nats_group = group("nats", "the NATS authority of a deployment")
    nats_init = command(nats_group, "init", "create the authority (once) and write the server's and services' files")
    nats_init.add_argument("--dir", type=Path, required=True, help="where to write them")
    nats_init.add_argument(
        "--resolver-dir", default="/data/accounts", help="where nats-server keeps pushed account JWTs (writable)"
    )
    return root


# Every service that talks to NATS, with the ``services.<module>`` it runs: each gets credentials of its own.
DEPLOYED_SERVICES = {
    "ingress": "ingress",
    "router": "router",
    "billing": "billing",
    "hoster_adapter": "hoster_adapter",
    "console": "console",
}


def nats_init(directory: Path, resolver_dir: str) -> dict[str, Any]:
    """The NATS authority of a deployment, in ``directory`` (kept if it exists, so re-running changes no key):
    ``authority/`` (operator and account seeds: billing's ``CS_NATS_AUTH_DIR``, secret), ``auth.conf`` (the
    operator, system account and resolver for nats-server to include) and ``creds/<service>.creds``."""
    authority = AuthStore(directory / "authority").init()
    conf = directory / "auth.conf"
    conf.write_text(authority.server_config(Path(resolver_dir)))
    creds = {name: str(service_creds(authority, directory / "creds", name, module))
             for name, module in DEPLOYED_SERVICES.items()}  # fmt: skip
    return {"authority": str(authority.directory), "server_config": str(conf), "creds": creds}


async def run(argv: list[str], settings: CliSettings | None = None) -> int:
    """Parse ``argv``, carry out the command against the database, print the result; the exit code."""
    args = parser().parse_args(argv)
    settings = settings or CliSettings()
    if args.command == "nats":  # no database: the deployment's NATS files only
        written = nats_init(args.dir, args.resolver_dir)
        print(json.dumps(written) if args.json else "\n".join(f"{k}: {v}" for k, v in written.items()))
        return 0
    if args.command == "deadletter":  # no database: the DEADLETTER stream only
        try:
            data, text = await dead_letters(settings, args.action, getattr(args, "seq", None))
        except (LookupError, OSError, nats.errors.Error) as exc:
            print(json.dumps({"error": str(exc)}) if args.json else f"computeshare: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(data) if args.json else text)
        return 0
    try:
        pool = await asyncpg.create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"computeshare: cannot reach the billing database: {exc}", file=sys.stderr)
        return 2
    try:
        await apply_migrations(pool)
        data, text, code = await _run(args, Ledger(pool), settings)
    except NotFound as exc:
        print(json.dumps({"error": str(exc)}) if args.json else f"computeshare: {exc}", file=sys.stderr)
        return 1
    except (ValueError, asyncpg.DataError, RuntimeError, OSError, nats.errors.Error) as exc:
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
