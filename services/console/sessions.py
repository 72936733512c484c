"""Console sessions: a signed cookie, its CSRF token, and the cookie's attributes. No I/O here.

A session lives in the browser only (every replica can read it; nothing to share between them): who signed
in (an account's management key or a hoster's console token, by its SHA-256, never the secret itself), and a
random CSRF token every form must send back. The cookie is signed and timestamped with the console's secret
(``itsdangerous``), so it cannot be forged or kept past ``session_ttl_s`` without a visit. The credential
behind a session is checked again on every page: a revoked key or hoster ends its sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE = "cs_console"
# The name of the hidden field every form carries.
CSRF_FIELD = "csrf_token"

SessionKind = Literal["visitor", "account", "hoster"]


@dataclass(frozen=True)
class Session:
    """One browser's session. ``visitor``: signed in as nobody yet (it still has a CSRF token, so the sign-in
    form is protected too). ``credential_hash``: the SHA-256 (hex) of the management key or console token."""

    csrf: str
    kind: SessionKind = "visitor"
    credential_hash: str | None = None

    @classmethod
    def new(cls) -> Session:
        """A visitor's session with a fresh CSRF token."""
        return cls(csrf=secrets.token_urlsafe(32))

    def signed_in(self, kind: SessionKind, credential_hash: str) -> Session:
        """The session after signing in: a new CSRF token too (a token seen before sign-in is not reused)."""
        return Session(csrf=secrets.token_urlsafe(32), kind=kind, credential_hash=credential_hash)

    def accepts(self, token: str | None) -> bool:
        """Whether a form's CSRF token is this session's (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionCodec:
    """Signs sessions into cookie values and reads them back (``None``: absent, forged, or too old)."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="computeshare.console.session")
        self.ttl_s = ttl_s

    def dumps(self, session: Session) -> str:
        """The cookie value of ``session``, signed with the time it was signed."""
        value: str = self._serializer.dumps([session.csrf, session.kind, session.credential_hash])
        return value

    def loads(self, value: str | None) -> Session | None:
        """The session in a cookie value, if it is ours and younger than ``ttl_s``."""
        if not value:
            return None
        try:
            csrf, kind, credential_hash = self._serializer.loads(value, max_age=self.ttl_s)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(csrf, str) or kind not in ("visitor", "account", "hoster"):
            return None
        if kind != "visitor" and not isinstance(credential_hash, str):
            return None
        return Session(csrf=csrf, kind=kind, credential_hash=credential_hash)


def served_over_tls(scheme: str, forwarded_proto: str | None) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy that says so
    (``X-Forwarded-Proto``, the first hop's). Cookies are ``Secure`` then."""
    if forwarded_proto:
        return forwarded_proto.split(",")[0].strip().lower() == "https"
    return scheme == "https"


def set_session_cookie(response: Response, session: Session, codec: SessionCodec, secure: bool) -> None:
    """Put ``session`` on ``response``: HttpOnly (no script reads it), SameSite=Lax (not sent with cross-site
    POSTs), Secure over TLS, scoped to the console's path, expiring with the session."""
    response.set_cookie(
        COOKIE, codec.dumps(session), max_age=codec.ttl_s, path="/console", httponly=True, samesite="lax",
        secure=secure,
    )  # fmt: skip


def clear_session_cookie(response: Response, secure: bool) -> None:
    """Remove the session cookie (signing out)."""
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="lax", secure=secure)
