from __future__ import annotations

import datetime as dt

from libs.contracts.billing import KeyInfo
from libs.platform import apikeys
from services.billing.ledger import window_of
from services.ingress.gateway import KeyCache


def test_new_keys_are_well_formed_distinct_and_carry_256_bits() -> None:
    keys = {apikeys.new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith("ngk_")
        assert apikeys.well_formed(key)
        assert len(key) - 4 >= 43  # 32 bytes of url-safe base64
    assert not apikeys.well_formed("sk-abc")
    assert not apikeys.well_formed("ngk_short")
    assert not apikeys.well_formed("ngk_" + "a" * 40 + "!")


def test_hash_is_stable_hex_and_the_display_prefix_hides_the_secret() -> None:
    key = apikeys.new_key()
    assert apikeys.hash_key(key) == apikeys.hash_key(key)
    assert len(apikeys.hash_key(key)) == 64
    assert key[12:] not in apikeys.display_prefix(key)


def test_rate_windows_are_whole_minutes() -> None:
    start, reset = window_of(dt.datetime(2026, 11, 22, 10, 15, 45, 500_000, tzinfo=dt.UTC))
    assert start == dt.datetime(2026, 11, 22, 10, 15, tzinfo=dt.UTC)
    assert reset == 14.5


def test_key_cache_expires_entries_after_its_ttl() -> None:
    cache = KeyCache(ttl_s=2.0, max_entries=2)
    info = KeyInfo(status="valid", key_id="k", account_id="a")
    cache.put("h1", info, now=100.0)
    assert cache.get("h1", now=101.9) == info
    assert cache.get("h1", now=102.0) is None
    cache.put("h2", info, now=100.0)
    cache.put("h3", info, now=100.0)  # full: starts over instead of growing
    assert cache.get("h1", now=100.5) is None
    assert cache.get("h3", now=100.5) == info


def test_management_keys_and_hoster_tokens_are_told_apart_by_their_prefix() -> None:
    manager = apikeys.new_key(apikeys.MANAGEMENT_PREFIX)
    token = apikeys.new_key(apikeys.HOSTER_TOKEN_PREFIX)
    assert manager.startswith("ngm_")
    assert apikeys.well_formed(manager)
    assert not apikeys.well_formed(token)  # a console token is never an API key
    assert apikeys.well_formed_hoster_token(token)
    assert not apikeys.well_formed_hoster_token(manager)


def test_a_changed_key_leaves_the_cache_at_once() -> None:
    cache = KeyCache(ttl_s=5.0)
    cache.put("h", KeyInfo(status="valid", key_id="k", account_id="a", kind="management"), now=0.0)
    assert cache.get("h", now=1.0) is not None
    cache.forget("h")
    cache.forget("never-cached")
    assert cache.get("h", now=1.0) is None
