"""Model registry context: the tokenizer billing holds for each registered model, for services to count with.

A service asks billing for a model's tokenizer (``billing.tokenizer.fetch``) and counts locally from then on.
The two files travel as one bundle (``pack_tokenizer_bundle``: compressed, so a 128k-vocabulary tokenizer is
about a megabyte), in parts of at most ``PART_BYTES``, since one NATS message holds at most a megabyte. The
asker names the bundle it already has: billing answers ``unchanged`` and sends nothing when it is current.
"""

from __future__ import annotations

import struct
import zlib
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from libs.contracts.common import Contract

# A model's name as clients write it in ``model`` (OpenAI's field, at most 256 characters).
MAX_MODEL_NAME = 256
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# The bytes of the bundle one answer carries: with base64 and the envelope, well under NATS' 1 MB.
PART_BYTES = 512 * 1024
# The largest bundle unpacked: both files of the largest tokenizer a registration takes (``libs.tokens.model``).
MAX_BUNDLE_FILES_BYTES = 68 * 1024 * 1024
_LENGTH = struct.Struct(">Q")


class FetchTokenizer(Contract):
    """service -> billing (``billing.tokenizer.fetch``): model ``model``'s tokenizer bundle from ``offset``.
    ``known_bundle_sha256``: the bundle the asker holds (answered ``unchanged`` when still current). A fetch
    past the first part names the ``version`` its first part came from, so every part is of one bundle."""

    model: ModelName
    known_bundle_sha256: Sha256 | None = None
    version: int | None = Field(None, ge=1)
    offset: int = Field(0, ge=0)


class RegisteredModels(Contract):
    """billing -> router (``billing.tokenizers.list``): every model registered with its tokenizer, by name."""

    models: list[str]
    # The fastest a hoster of the model can plausibly generate, tokens per second, where its registration
    # set one (``--max-tokens-per-s``); the router's default bound for the others.
    max_tokens_per_s: dict[str, Annotated[float, Field(gt=0, le=1e9)]] = Field(default_factory=dict)
    # The hosters the operator designated as each model's reference (``computeshare model reference``): spot
    # checks compare the model's other hosters with them.
    references: dict[str, list[str]] = Field(default_factory=dict)


class TokenizerPart(Contract):
    """billing -> service: one part of a model's current tokenizer bundle (``registered``), or no bundle:
    ``unchanged`` (the asker's is current), ``not_registered`` (no such model, or no such version). ``data``
    is raw bytes here and base64 in JSON."""

    model_config = ConfigDict(allow_inf_nan=False, ser_json_bytes="base64", val_json_bytes="base64")

    status: Literal["registered", "unchanged", "not_registered"]
    model: str
    version: int | None = None
    tokenizer_sha256: Sha256 | None = None
    config_sha256: Sha256 | None = None
    bundle_sha256: Sha256 | None = None
    bundle_size: int = Field(0, ge=0)
    offset: int = Field(0, ge=0)
    data: bytes = Field(b"", max_length=PART_BYTES)


def pack_tokenizer_bundle(tokenizer_json: bytes, tokenizer_config_json: bytes) -> bytes:
    """Both files as one compressed bundle: ``tokenizer.json``'s length, it, then ``tokenizer_config.json``."""
    return zlib.compress(_LENGTH.pack(len(tokenizer_json)) + tokenizer_json + tokenizer_config_json, 6)


def unpack_tokenizer_bundle(bundle: bytes) -> tuple[bytes, bytes]:
    """``(tokenizer.json, tokenizer_config.json)`` of a bundle; ``ValueError`` when it is not one (or would
    unpack past ``MAX_BUNDLE_FILES_BYTES``)."""
    unpacker = zlib.decompressobj()
    try:
        raw = unpacker.decompress(bundle, MAX_BUNDLE_FILES_BYTES + _LENGTH.size)
    except zlib.error as exc:
        raise ValueError(f"not a tokenizer bundle: {exc}") from None
    if unpacker.unconsumed_tail or not unpacker.eof or len(raw) < _LENGTH.size:
        raise ValueError("not a tokenizer bundle (truncated, or too large)")
    (length,) = _LENGTH.unpack_from(raw)
    if length > len(raw) - _LENGTH.size:
        raise ValueError("not a tokenizer bundle (its tokenizer.json is cut short)")
    body = raw[_LENGTH.size :]
    return body[:length], body[length:]
