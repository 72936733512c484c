"""The model registry: each model's tokenizer files, versioned, and the parts services fetch them in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from libs.contracts.models import (
    MAX_MODEL_NAME,
    PART_BYTES,
    FetchTokenizer,
    TokenizerPart,
    pack_tokenizer_bundle,
)
from libs.tokens.model import TokenizerFiles, load_model_tokenizer, sha256_hex
from services.billing.repository import PoolBound

# Serializes registrations of one model (with the hash of its name), so two never take the same version.
_REGISTER_LOCK = 0x6353_7400


@dataclass(frozen=True)
class Registration:
    """One registered version of a model's tokenizer (without the files)."""

    model: str
    version: int
    tokenizer_sha256: str
    config_sha256: str
    bundle_sha256: str
    vocab_size: int
    has_chat_template: bool
    source: str
    registered_at: datetime
    max_tokens_per_s: float | None = None
    previous_version: int | None = None
    changed: bool = True


def check_model_name(name: str) -> None:
    """``ValueError`` unless ``name`` is one a client can write in ``model``."""
    if not name.strip() or len(name) > MAX_MODEL_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"{name!r} is not a model name (1 to {MAX_MODEL_NAME} printable characters)")


def read_tokenizer_files(tokenizer: Path, config: Path) -> TokenizerFiles:
    """The two files from disk."""
    return TokenizerFiles(tokenizer.read_bytes(), config.read_bytes())


def vet_tokenizer(files: TokenizerFiles) -> tuple[int, bool]:
    """Load ``files`` as a service will and try every chat template on probe conversations in the sandbox:
    ``(vocab size, has a chat template)``; ``ValueError`` (``TokenizerFilesError``, ``ChatTemplateError``,
    ``UnsafeChatTemplate``) when the model cannot be registered with them."""
    model = load_model_tokenizer(files)
    model.vet()
    return model.vocab_size, bool(model.chat_templates)


_COLUMNS = """model, version, tokenizer_sha256, config_sha256, bundle_sha256, vocab_size, has_chat_template, source,
              registered_at, max_tokens_per_s"""


def _registration(row: asyncpg.Record, previous: int | None = None, changed: bool = True) -> Registration:
    return Registration(
        model=row["model"],
        version=row["version"],
        tokenizer_sha256=row["tokenizer_sha256"],
        config_sha256=row["config_sha256"],
        bundle_sha256=row["bundle_sha256"],
        vocab_size=row["vocab_size"],
        has_chat_template=row["has_chat_template"],
        source=row["source"],
        registered_at=row["registered_at"],
        max_tokens_per_s=row["max_tokens_per_s"],
        previous_version=previous,
        changed=changed,
    )


class ModelRegistry(PoolBound):
    """Registered models' tokenizers: registering one adds a version (an identical registration adds none);
    the latest version is the model's tokenizer."""

    async def register(
        self, model: str, files: TokenizerFiles, source: str, max_tokens_per_s: float | None = None
    ) -> Registration:
        """Vet ``files`` (``vet_tokenizer``) and record them as ``model``'s tokenizer, with its speed bound
        (``None``: the router's default): its next version, or its current one, unchanged, when it has these
        very files and bound already."""
        check_model_name(model)
        if max_tokens_per_s is not None and not 0 < max_tokens_per_s <= 1e9:
            raise ValueError(f"--max-tokens-per-s is a speed above 0 and at most 1e9, not {max_tokens_per_s}")
        vocab_size, has_template = await asyncio.to_thread(vet_tokenizer, files)
        bundle = pack_tokenizer_bundle(files.tokenizer_json, files.tokenizer_config_json)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _REGISTER_LOCK, model)
            current = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM model_tokenizers WHERE model = $1 ORDER BY version DESC LIMIT 1", model
            )
            if current is not None and (
                current["tokenizer_sha256"],
                current["config_sha256"],
                current["max_tokens_per_s"],
            ) == (files.tokenizer_sha256, files.config_sha256, max_tokens_per_s):
                return _registration(current, current["version"], changed=False)
            row = await conn.fetchrow(
                f"""INSERT INTO model_tokenizers (model, version, tokenizer_json, tokenizer_config_json,
                        tokenizer_sha256, config_sha256, bundle, bundle_sha256, vocab_size, has_chat_template, source,
                        max_tokens_per_s)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {_COLUMNS}""",
                model,
                1 if current is None else current["version"] + 1,
                files.tokenizer_json,
                files.tokenizer_config_json,
                files.tokenizer_sha256,
                files.config_sha256,
                bundle,
                sha256_hex(bundle),
                vocab_size,
                has_template,
                source,
                max_tokens_per_s,
            )
        assert row is not None  # INSERT ... RETURNING
        return _registration(row, None if current is None else current["version"])

    async def current(self) -> list[Registration]:
        """Every registered model's latest version, by name."""
        rows = await self._pool.fetch(
            f"""SELECT DISTINCT ON (model) {_COLUMNS} FROM model_tokenizers ORDER BY model, version DESC"""
        )
        return [_registration(r) for r in rows]

    async def references(self) -> dict[str, list[str]]:
        """Every registered model's reference hosters (the operator's own deployments), by model."""
        rows = await self._pool.fetch(
            """SELECT r.model, r.hoster_id FROM model_references r
               WHERE EXISTS (SELECT 1 FROM model_tokenizers t WHERE t.model = r.model) ORDER BY r.model, r.hoster_id"""
        )
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row["model"], []).append(row["hoster_id"])
        return out

    async def set_references(self, model: str, hosters: list[str]) -> list[str]:
        """Make ``hosters`` (live registered hosters, by id or name) the reference of ``model`` (registered),
        replacing any (none: the model has no reference); their ids. ``ValueError`` naming what is not
        registered."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT 1 FROM model_tokenizers WHERE model = $1 LIMIT 1", model):
                raise ValueError(f"model {model} is not registered (computeshare model register)")
            ids = []
            for ref in hosters:
                hoster_id = await conn.fetchval(
                    """SELECT id::text FROM hosters
                       WHERE revoked_at IS NULL AND (id::text = $1 OR lower(name) = lower($1))""",
                    ref,
                )
                if hoster_id is None:
                    raise ValueError(f"no registered hoster {ref}")
                ids.append(hoster_id)
            await conn.execute("DELETE FROM model_references WHERE model = $1", model)
            await conn.executemany(
                "INSERT INTO model_references (model, hoster_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [(model, h) for h in ids],
            )
        return sorted(set(ids))

    async def history(self, model: str) -> list[Registration]:
        """Every version of ``model``, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM model_tokenizers WHERE model = $1 ORDER BY version", model
        )
        return [_registration(r) for r in rows]

    async def fetch(self, query: FetchTokenizer) -> TokenizerPart:
        """One part of a model's tokenizer bundle: from the latest version at offset 0 (``unchanged`` when the
        asker names its bundle), from the version asked for past it."""
        if query.offset == 0 and query.version is None:
            row = await self._pool.fetchrow(
                """SELECT version, tokenizer_sha256, config_sha256, bundle_sha256, octet_length(bundle) AS size,
                          substring(bundle FROM 1 FOR $2) AS data
                   FROM model_tokenizers WHERE model = $1 ORDER BY version DESC LIMIT 1""",
                query.model,
                PART_BYTES,
            )
        else:
            row = await self._pool.fetchrow(
                """SELECT version, tokenizer_sha256, config_sha256, bundle_sha256, octet_length(bundle) AS size,
                          substring(bundle FROM $3 + 1 FOR $4) AS data
                   FROM model_tokenizers WHERE model = $1 AND version = $2""",
                query.model,
                query.version,
                query.offset,
                PART_BYTES,
            )
        if row is None:
            return TokenizerPart(status="not_registered", model=query.model)
        if query.known_bundle_sha256 == row["bundle_sha256"]:
            return TokenizerPart(status="unchanged", model=query.model, version=row["version"],
                                 bundle_sha256=row["bundle_sha256"], bundle_size=row["size"])  # fmt: skip
        return TokenizerPart(
            status="registered",
            model=query.model,
            version=row["version"],
            tokenizer_sha256=row["tokenizer_sha256"],
            config_sha256=row["config_sha256"],
            bundle_sha256=row["bundle_sha256"],
            bundle_size=row["size"],
            offset=query.offset,
            data=row["data"],
        )
