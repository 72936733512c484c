"""Console sessions: signed cookies that cannot be forged or outlive their TTL, CSRF tokens, the TLS check."""

from __future__ import annotations

import time

import pytest
from fastapi.responses import Response

from services.console.sessions import (
    COOKIE,
    Session,
    SessionCodec,
    clear_session_cookie,
    served_over_tls,
    set_session_cookie,
)

SECRET = "s" * 48


def test_a_session_round_trips_through_its_cookie() -> None:
    codec = SessionCodec(SECRET, ttl_s=60)
    session = Session.new().signed_in("account", "ab" * 32)
    assert codec.loads(codec.dumps(session)) == session
    visitor = Session.new()
    assert codec.loads(codec.dumps(visitor)) == visitor


def test_a_cookie_signed_with_another_secret_or_altered_is_refused() -> None:
    session = Session.new().signed_in("hoster", "cd" * 32)
    value = SessionCodec(SECRET, ttl_s=60).dumps(session)
    assert SessionCodec("t" * 48, ttl_s=60).loads(value) is None
    payload, _, signature = value.rpartition(".")
    assert SessionCodec(SECRET, ttl_s=60).loads(payload + "." + signature[::-1]) is None
    # Another session's payload under this one's signature: the signature does not cover it.
    other = SessionCodec(SECRET, ttl_s=60).dumps(Session.new().signed_in("account", "99" * 32))
    forged = other.rpartition(".")[0] + "." + signature
    assert SessionCodec(SECRET, ttl_s=60).loads(forged) is None
    assert SessionCodec(SECRET, ttl_s=60).loads("") is None
    assert SessionCodec(SECRET, ttl_s=60).loads(None) is None


def test_a_cookie_older_than_the_ttl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = SessionCodec(SECRET, ttl_s=60)
    value = codec.dumps(Session.new().signed_in("account", "ef" * 32))
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert codec.loads(value) is None


def test_the_csrf_token_must_be_the_sessions_own() -> None:
    session = Session.new()
    assert session.accepts(session.csrf)
    assert not session.accepts(None)
    assert not session.accepts("")
    assert not session.accepts(Session.new().csrf)


def test_signing_in_changes_the_csrf_token() -> None:
    visitor = Session.new()
    signed_in = visitor.signed_in("account", "01" * 32)
    assert signed_in.csrf != visitor.csrf
    assert not signed_in.accepts(visitor.csrf)
    assert (signed_in.kind, signed_in.credential_hash) == ("account", "01" * 32)


def test_the_cookie_is_http_only_same_site_and_secure_only_over_tls() -> None:
    codec = SessionCodec(SECRET, ttl_s=600)
    plain, tls = Response(), Response()
    set_session_cookie(plain, Session.new(), codec, secure=False)
    set_session_cookie(tls, Session.new(), codec, secure=True)
    for response in (plain, tls):
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Path=/console" in cookie
        assert "Max-Age=600" in cookie
    assert "Secure" not in plain.headers["set-cookie"]
    assert "Secure" in tls.headers["set-cookie"]
    cleared = Response()
    clear_session_cookie(cleared, secure=True)
    assert "Max-Age=0" in cleared.headers["set-cookie"]


@pytest.mark.parametrize(
    ("scheme", "forwarded", "expected"),
    [
        ("http", None, False),
        ("https", None, True),
        ("http", "https", True),
        ("http", "https, http", True),  # the first hop's word counts
        ("https", "http", False),
        ("http", "HTTPS", True),
    ],
)
def test_tls_is_read_from_the_scheme_or_the_proxys_header(scheme: str, forwarded: str | None, expected: bool) -> None:
    assert served_over_tls(scheme, forwarded) is expected
