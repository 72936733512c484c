"""The model registry against a real PostgreSQL (``computeshare model ...``) and, for the fetch subject, a real
nats-server and billing's own process."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from libs.contracts import subjects
from libs.contracts.models import PART_BYTES, FetchTokenizer, RegisteredModels, TokenizerPart
from libs.platform.apikeys import hash_key
from libs.tokens import RegisteredTokenizers, count_chat_prompt, load_model_tokenizer, nats_requester
from services.billing.cli import CliSettings, run
from services.billing.ledger import Ledger
from services.billing.repository import HosterRepository, apply_migrations
from services.billing.tokenizers import ModelRegistry
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.unit.tokens import trained
from tests.unit.tokens.test_gguf_import import write_gguf

pytestmark = pytest.mark.integration

BODY = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the weather in paris"}]}


async def cli(database_url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = await run(["--json", *argv], CliSettings(database_url=SecretStr(database_url)))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def model_dir(path: Path, template: Any = trained.CHATML, vocab_size: int = 800) -> Path:
    tokenizer = trained.train_tokenizer(vocab_size=vocab_size, lines=1500)
    return trained.write(path, trained.files(tokenizer, trained.config(template)))


def register_args(name: str, directory: Path) -> list[str]:
    return ["model", "register", name, "--tokenizer", str(directory / "tokenizer.json"),
            "--tokenizer-config", str(directory / "tokenizer_config.json")]  # fmt: skip


async def test_register_replace_and_list_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = model_dir(tmp_path / "v1")
    code, registered, _ = await cli(database_url, capsys, *register_args("acme/chat-1", first))
    assert code == 0
    files = trained.files_in(first)
    assert registered["version"] == 1
    assert (registered["tokenizer_sha256"], registered["config_sha256"]) == (files.tokenizer_sha256,
                                                                             files.config_sha256)  # fmt: skip
    assert registered["vocab_size"] == load_model_tokenizer(files).vocab_size
    assert (registered["has_chat_template"], registered["changed"]) == (True, True)

    # The same files again change nothing; new ones are a new version, and the old one is kept.
    _, again, _ = await cli(database_url, capsys, *register_args("acme/chat-1", first))
    assert (again["version"], again["changed"]) == (1, False)
    second = model_dir(tmp_path / "v2", template="{{ messages[0].content }}")
    _, replaced, _ = await cli(database_url, capsys, *register_args("acme/chat-1", second))
    assert (replaced["version"], replaced["previous_version"]) == (2, 1)

    # A speed bound is part of a registration: a new one is a new version of the same files.
    _, bounded, _ = await cli(database_url, capsys, *register_args("acme/chat-1", second), "--max-tokens-per-s", "900")
    assert (bounded["version"], bounded["max_tokens_per_s"], bounded["changed"]) == (3, 900.0, True)
    code, _, refused = await cli(database_url, capsys, *register_args("acme/chat-1", second), "--max-tokens-per-s", "0")
    assert code != 0
    assert "--max-tokens-per-s" in refused

    gguf = write_gguf(tmp_path / "small.gguf", trained.load_trained(first))
    code, from_gguf, _ = await cli(database_url, capsys, "model", "register", "llama/small", "--from-gguf", str(gguf))
    assert code == 0
    assert (from_gguf["source"], from_gguf["has_chat_template"]) == ("gguf", True)

    code, listing, _ = await cli(database_url, capsys, "model", "list")
    assert code == 0
    by_name = {m["model"]: m for m in listing}
    assert sorted(by_name) == ["acme/chat-1", "llama/small"]
    assert (by_name["acme/chat-1"]["version"], by_name["acme/chat-1"]["max_tokens_per_s"]) == (3, 900.0)
    assert by_name["llama/small"]["max_tokens_per_s"] is None  # the router's default
    assert by_name["acme/chat-1"]["config_sha256"] == trained.files_in(second).config_sha256
    assert by_name["llama/small"]["vocab_size"] == from_gguf["vocab_size"]
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch(
            "SELECT version, tokenizer_json FROM model_tokenizers WHERE model = 'acme/chat-1' ORDER BY version"
        )
    finally:
        await conn.close()
    assert [r["version"] for r in versions] == [1, 2, 3]
    assert versions[0]["tokenizer_json"] == files.tokenizer_json  # byte for byte

    # The text listing reads too.
    assert await run(["model", "list"], CliSettings(database_url=SecretStr(database_url))) == 0
    assert "acme/chat-1" in capsys.readouterr().out


async def test_an_unsafe_or_broken_registration_is_refused_and_stores_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    unsafe = model_dir(tmp_path / "unsafe", template="{{ ''.__class__.__mro__ }}")
    code, _, err = await cli(database_url, capsys, *register_args("evil", unsafe))
    assert code == 2
    assert "outside its sandbox" in json.loads(err)["error"]
    (tmp_path / "bad.json").write_text("{ not json")
    broken = ["--tokenizer", str(tmp_path / "bad.json"), "--tokenizer-config", str(unsafe / "tokenizer_config.json")]
    code, _, err = await cli(database_url, capsys, "model", "register", "broken", *broken)
    assert code == 2
    assert "not a tokenizer" in json.loads(err)["error"]
    code, _, err = await cli(database_url, capsys, "model", "register", "half", "--tokenizer", str(tmp_path / "x"))
    assert code == 2
    assert "--tokenizer-config" in json.loads(err)["error"]
    assert await cli(database_url, capsys, "model", "list") == (0, [], "")


async def test_a_service_fetches_a_tokenizer_once_in_parts_and_counts_as_the_files_do(
    nats_server: NatsTestServer, database_url: str, spawn: Spawn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A template with an incompressible comment makes the bundle span several parts.
    padded = trained.CHATML + "{# " + secrets.token_hex(PART_BYTES * 2) + " #}"
    directory = model_dir(tmp_path / "big", template=padded)
    assert (await cli(database_url, capsys, *register_args("acme/big", directory)))[0] == 0
    spawn("billing", "billing", {**nats_server.env("billing", "billing"), "CS_BILLING_DATABASE_URL": database_url},
          marker="billing ready")  # fmt: skip
    expected = count_chat_prompt(load_model_tokenizer(trained.files_in(directory)), BODY)

    nc = await nats_server.connect("router")
    try:
        first = TokenizerPart.model_validate_json(
            (await nc.request(subjects.FETCH_TOKENIZER, FetchTokenizer(model="acme/big").model_dump_json().encode(),
                              timeout=5)).data
        )  # fmt: skip
        assert first.bundle_size > 2 * PART_BYTES  # three parts at least
        assert len(first.data) == PART_BYTES
        clock = [0.0]
        tokenizers = RegisteredTokenizers(nats_requester(nc), refresh_s=10.0, clock=lambda: clock[0])
        model = await tokenizers.get("acme/big")
        assert model is not None
        assert count_chat_prompt(model, BODY) == expected
        assert await tokenizers.get("acme/big") is model
        assert await tokenizers.get("nobody/registered-this") is None
        assert tokenizers.fetches == 1

        # Past the refresh interval it asks again: unchanged, so nothing is fetched.
        clock[0] = 11.0
        assert await tokenizers.get("acme/big") is model
        assert tokenizers.fetches == 1

        # A new registration reaches it at its next refresh.
        replacement = model_dir(tmp_path / "small", template="{{ messages[1].content }}")
        assert (await cli(database_url, capsys, *register_args("acme/big", replacement)))[0] == 0
        assert await tokenizers.get("acme/big") is model  # within the interval
        clock[0] = 22.0
        newer = await tokenizers.get("acme/big")
        assert newer is not None
        assert newer is not model
        assert tokenizers.fetches == 2
        assert newer.render_chat(BODY["messages"]) == "the weather in paris"
        assert (newer.tokenizer_sha256, newer.config_sha256) == (
            trained.files_in(replacement).tokenizer_sha256, trained.files_in(replacement).config_sha256
        )  # fmt: skip

        # The routers' list of registered models carries the speed bounds registrations set.
        bounded = [*register_args("acme/fast", replacement), "--max-tokens-per-s", "12000"]
        assert (await cli(database_url, capsys, *bounded))[0] == 0
        listing = RegisteredModels.model_validate_json(
            (await nc.request(subjects.LIST_TOKENIZERS, b"", timeout=5)).data
        )
        assert sorted(listing.models) == ["acme/big", "acme/fast"]
        assert listing.max_tokens_per_s == {"acme/fast": 12000.0}
    finally:
        await nc.close()


async def test_a_models_reference_hosters_are_designated_listed_and_replaced(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pool = await asyncpg.create_pool(database_url)
    try:
        await apply_migrations(pool)
        owner = await Ledger(pool).create_account("hoster", 0)
        hosters = HosterRepository(pool)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for i, hoster_id in enumerate(ids):
            await hosters.register(hoster_id, f"ref-box-{i}-{tmp_path.name[-6:]}", None, False, owner.id,
                                   f"UPUB{hoster_id}", hash_key(f"ngh_{hoster_id}"))  # fmt: skip
        name = f"acme/ref-{secrets.token_hex(4)}"
        # A model not registered, or a hoster no one registered, is refused and nothing is kept.
        code, _, err = await cli(database_url, capsys, "model", "reference", name, "--hoster", ids[0])
        assert code == 2
        assert "not registered" in json.loads(err)["error"]
        await cli(database_url, capsys, *register_args(name, model_dir(tmp_path / "m")))
        code, _, err = await cli(database_url, capsys, "model", "reference", name, "--hoster", str(uuid.uuid4()))
        assert code == 2
        assert "no registered hoster" in json.loads(err)["error"]

        # By id or by name; the listing billing answers routers with carries them.
        by_name = f"ref-box-1-{tmp_path.name[-6:]}"
        code, set_, _ = await cli(database_url, capsys, "model", "reference", name, "--hoster", ids[0],
                                  "--hoster", by_name.upper())  # fmt: skip
        assert code == 0
        assert set_["reference_hosters"] == sorted(ids[:2])
        registry = ModelRegistry(pool)
        assert (await registry.references())[name] == sorted(ids[:2])
        _, listed, _ = await cli(database_url, capsys, "model", "list")
        assert next(m for m in listed if m["model"] == name)["reference_hosters"] == sorted(ids[:2])
        # Designating again replaces; none clears.
        await cli(database_url, capsys, "model", "reference", name, "--hoster", ids[2])
        assert (await registry.references())[name] == [ids[2]]
        await cli(database_url, capsys, "model", "reference", name)
        assert name not in await registry.references()
    finally:
        await pool.close()
