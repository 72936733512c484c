"""The ``computeshare`` command against a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from libs.platform.natsauth import AuthStore
from services.billing.cli import CliSettings, run

pytestmark = pytest.mark.integration


async def cli(database_url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = await run(["--json", *argv], CliSettings(database_url=SecretStr(database_url)))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


async def test_accounts_keys_limits_and_the_ledger_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, account = await cli(database_url, capsys, "account", "create", "--name", "acme", "--credits", "12.5")
    assert code == 0
    assert isinstance(account, dict)
    assert (account["name"], account["balance"]) == ("acme", 12.5)
    _, topped = await cli(database_url, capsys, "account", "topup", account["id"], "2.5")
    assert isinstance(topped, dict)
    assert topped["balance"] == 15.0
    _, capped = await cli(database_url, capsys, "account", "set-limits", account["id"], "--daily-cap", "3")
    assert isinstance(capped, dict)
    assert capped["daily_cap"] == 3.0
    _, key = await cli(database_url, capsys, "key", "create", account["id"], "--rpm", "30", "--tpm", "1000")
    assert isinstance(key, dict)
    assert key["key"].startswith("ngk_")
    assert (key["rpm"], key["tpm"]) == (30, 1000)
    _, found = await cli(database_url, capsys, "key", "find", key["key"])
    assert found == {
        "status": "valid",
        "key_id": key["id"],
        "account_id": account["id"],
        "rpm": 30,
        "tpm": 1000,
        "kind": "inference",
    }
    assert (await cli(database_url, capsys, "key", "revoke", key["id"]))[0] == 0
    _, revoked = await cli(database_url, capsys, "key", "find", key["key"])
    assert isinstance(revoked, dict)
    assert revoked["status"] == "revoked"
    assert await cli(database_url, capsys, "ledger", "check") == (0, {"ok": True, "problems": []})
    assert await cli(database_url, capsys, "hoster", "earnings") == (0, [])


async def test_management_keys_and_key_listing_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, account = await cli(database_url, capsys, "account", "create", "--name", "acme")
    assert isinstance(account, dict)
    _, inference = await cli(database_url, capsys, "key", "create", account["id"], "--label", "app")
    code, manager = await cli(database_url, capsys, "key", "create", account["id"], "--management", "--label", "ops")
    assert code == 0
    assert isinstance(inference, dict)
    assert isinstance(manager, dict)
    assert manager["key"].startswith("ngm_")
    assert manager["kind"] == "management"
    _, found = await cli(database_url, capsys, "key", "find", manager["key"])
    assert isinstance(found, dict)
    assert (found["status"], found["kind"], found["account_id"]) == ("valid", "management", account["id"])
    code, listing = await cli(database_url, capsys, "key", "list", account["id"])
    assert code == 0
    assert isinstance(listing, list)
    assert {(k["key_id"], k["kind"], k["label"]) for k in listing} == {
        (inference["id"], "inference", "app"),
        (manager["id"], "management", "ops"),
    }
    assert all(k["last_used_at"] is None and k["revoked_at"] is None for k in listing)
    assert (await cli(database_url, capsys, "key", "list", "00000000-0000-4000-8000-000000000000"))[0] == 1


async def test_unknown_account_is_an_error_exit(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run(
        ["account", "show", "00000000-0000-4000-8000-000000000000"],
        CliSettings(database_url=SecretStr(database_url)),
    )
    assert code == 1
    assert "no account" in capsys.readouterr().err


async def test_hoster_register_refuses_a_live_hosters_name_in_any_case_and_uuid_shaped_names(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    authority = AuthStore(tmp_path / "authority").init()
    settings = CliSettings(database_url=SecretStr(database_url), nats_auth_dir=authority.directory)

    async def register(name: str) -> tuple[int, Any, str]:
        creds = tmp_path / f"{uuid.uuid4().hex}.creds"
        code = await run(["hoster", "register", "--json", "--name", name, "--creds", str(creds)], settings)
        out, err = capsys.readouterr()
        assert creds.exists() == (code == 0)  # credentials only for a registration that happened
        return code, json.loads(out) if out.strip() else None, err

    code, acme, _ = await register("acme")
    assert code == 0
    accounts_before = await count_accounts(database_url)
    code, _, err = await register("ACME")
    assert code == 2
    assert "a live hoster is registered as 'ACME'" in json.loads(err)["error"]
    assert await count_accounts(database_url) == accounts_before  # refused before anything was created
    code, _, err = await register(str(uuid.uuid4()).upper())
    assert code == 2
    assert "shaped like a UUID" in json.loads(err)["error"]
    code, acme_labs, _ = await register("acme-labs")
    assert code == 0
    assert isinstance(acme_labs, dict)
    assert isinstance(acme, dict)
    assert await fetch(database_url, "SELECT id::text, name FROM hosters ORDER BY created_at") == [
        (acme["id"], "acme"),
        (acme_labs["id"], "acme-labs"),
    ]


async def fetch(database_url: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def count_accounts(database_url: str) -> int:
    return int((await fetch(database_url, "SELECT count(*) FROM accounts"))[0][0])
