"""API keys: ``ngk_`` and 256 random bits, known to the network only by their SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "ngk_"
_WELL_FORMED = re.compile(r"ngk_[A-Za-z0-9_-]{22,128}")


def new_key() -> str:
    """A fresh key: ``ngk_`` and 32 random bytes, URL-safe base64 (43 characters)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The key's SHA-256 as hex: what is stored, cached and sent between services. Keys are random, so a
    fast hash is as safe as a slow one here."""
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Whether ``key`` could be one of ours (anything else is refused without a lookup)."""
    return _WELL_FORMED.fullmatch(key) is not None


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and errors."""
    return key[:8] + "…"
