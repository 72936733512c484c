"""API keys: a kind's prefix and 256 random bits, known to the network only by their SHA-256.

``ngk_``: an inference key (calls models); ``ngm_``: a management key (manages its account's keys, reads the
whole account); ``ngh_``: a hoster's console token. The prefix only helps people tell them apart: what a key
may do is what billing has stored for it.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "ngk_"
MANAGEMENT_PREFIX = "ngm_"
HOSTER_TOKEN_PREFIX = "ngh_"
_WELL_FORMED = re.compile(r"ng[km]_[A-Za-z0-9_-]{22,128}")
_HOSTER_TOKEN = re.compile(r"ngh_[A-Za-z0-9_-]{22,128}")


def new_key(prefix: str = PREFIX) -> str:
    """A fresh key: ``prefix`` and 32 random bytes, URL-safe base64 (43 characters)."""
    return prefix + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The key's SHA-256 as hex: what is stored, cached and sent between services. Keys are random, so a
    fast hash is as safe as a slow one here."""
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Whether ``key`` could be one of our API keys, either kind (anything else is refused without a lookup)."""
    return _WELL_FORMED.fullmatch(key) is not None


def well_formed_hoster_token(token: str) -> bool:
    """Whether ``token`` could be a hoster's console token."""
    return _HOSTER_TOKEN.fullmatch(token) is not None


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and errors."""
    return key[:8] + "…"
