"""NATS decentralized auth: the operator, its accounts and users as signed JWTs, and standard ``.creds`` files.

nats-server runs in operator mode: it trusts one operator key, accounts are JWTs the operator signs, users
are JWTs an account signs, carrying their permissions. The server enforces those permissions; our code
never checks them. A revoked user is listed in its account's JWT; pushing the re-signed account JWT to the
server (``$SYS.REQ.CLAIMS.UPDATE``) disconnects it and refuses it from then on.

Keys and signatures come from ``nkeys`` (the NATS project's library). The claims are written here as plain
dicts in the field names of the Go ``jwt/v2`` package the server decodes: the ``nats-jwt`` Python package
was tried and writes some of them under other names (``memory_storage`` for ``mem_storage``,
``max_msgs``/``expires`` for ``max``/``ttl``), which the server silently ignores.

The authority lives in a directory (``AuthStore``): the operator's, the system account's and the
application account's seeds and JWTs, and the revocations. Whoever holds it can mint credentials: in
Kubernetes it is a Secret mounted only where credentials are minted (the admin CLI).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import orjson

from libs.contracts import frames, subjects
from libs.contracts.hosters import HOSTER_TAG

# How long a hoster may answer one attempt, and with how many frames: its response permission (publishing to
# the reply subject of an attempt it received) ends after either. The attempt's own bounds, which the adapter
# keeps: as long as its longest (plus a minute: that deadline runs from the adapter's upstream request, a
# moment after the dispatch arrived, and the frame saying it ran out follows it), and its most frames.
RESPONSE_TTL_S = int(frames.MAX_ATTEMPT_DURATION_S) + 60
RESPONSE_MAX_MSGS = frames.MAX_ATTEMPT_FRAMES

# Per-connection limits in a hoster's user JWT, enforced by nats-server (2.15.1 applies a user JWT's "subs"
# and "payload"; tests/integration/nats/test_hoster_confinement.py holds it to them). It applies no "data"
# limit, and a user JWT has no connection limit (an account's "conn" counts the whole account's
# connections, every service's included): those stay unlimited, -1.
# A hoster's agent holds four subscriptions: its attempts, its cancels, its own heartbeats (its replicas share
# its capacity) and its inbox (replies to its requests); the rest is room for a client library's own.
# Past it the server refuses the subscription ("maximum subscriptions exceeded").
HOSTER_MAX_SUBS = 16
# The largest message a hoster may publish: nats-server's default max_payload, which every deployment of ours
# runs with and the adapter builds its frames up to. A server configured for more gives hosters no more; past
# it the server closes the connection ("maximum payload violation").
HOSTER_MAX_PAYLOAD = 1 << 20

SYSTEM_ACCOUNT = "SYS"
APP_ACCOUNT = "COMPUTESHARE"

_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


@dataclass(frozen=True)
class KeyPair:
    """An nkey: its seed (secret) and public key."""

    seed: str
    public_key: str

    @classmethod
    def create(cls, prefix: int) -> KeyPair:
        """A new random key of the kind ``prefix`` (``nkeys.PREFIX_BYTE_USER``, ...)."""
        return cls.from_seed(nkeys.encode_seed(os.urandom(32), prefix).decode())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        """The key pair of an encoded seed."""
        kp = nkeys.from_seed(bytearray(seed.encode()))
        return cls(seed, kp.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        """An ed25519 signature of ``data``."""
        signature: bytes = nkeys.from_seed(bytearray(self.seed.encode())).sign(data)
        return signature


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def encode_jwt(claims: dict[str, Any], issuer: KeyPair) -> str:
    """Sign ``claims`` as a NATS JWT (``ed25519-nkey``), filling ``iss``, ``iat`` and ``jti``."""
    body = {**claims, "iss": issuer.public_key, "iat": int(time.time()), "jti": ""}
    body["jti"] = base64.b32encode(hashlib.sha256(orjson.dumps(body)).digest()).decode().rstrip("=")
    signed = _b64(orjson.dumps({"typ": "JWT", "alg": "ed25519-nkey"})) + b"." + _b64(orjson.dumps(body))
    return (signed + b"." + _b64(issuer.sign(signed))).decode()


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies; we only read our own)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def operator_jwt(operator: KeyPair, name: str, system_account: str) -> str:
    """The operator's self-signed JWT."""
    return encode_jwt(
        {"sub": operator.public_key, "name": name, "nats": {"type": "operator", "version": 2,
                                                             "system_account": system_account}},
        operator,
    )  # fmt: skip


def account_jwt(
    account: KeyPair, name: str, operator: KeyPair, jetstream: bool, revocations: dict[str, int] | None = None
) -> str:
    """An account's JWT, signed by the operator; ``revocations`` maps user public keys to the unix time before
    which their JWTs are no longer valid."""
    limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    if jetstream:
        limits.update({"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1})
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits}
    if revocations:
        nats["revocations"] = dict(revocations)
    return encode_jwt({"sub": account.public_key, "name": name, "nats": nats}, operator)


@dataclass(frozen=True)
class Permissions:
    """What a user may publish and subscribe to; ``respond`` lets it publish to the reply subject of a
    message it received (a bounded number of times, for a bounded time). ``max_subs`` and ``max_payload``
    bound each of its connections (-1: no limit)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    respond: bool = False
    max_subs: int = -1
    max_payload: int = -1

    def claims(self) -> dict[str, Any]:
        """The permission and limit part of a user JWT's ``nats`` claims."""
        out: dict[str, Any] = {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)},
                               "subs": self.max_subs, "payload": self.max_payload}  # fmt: skip
        if self.respond:
            out["resp"] = {"max": RESPONSE_MAX_MSGS, "ttl": RESPONSE_TTL_S * 1_000_000_000}
        return out


def hoster_permissions(hoster_id: str) -> Permissions:
    """A hoster's confinement: its own attempts and cancels in, its own heartbeats, answers and outcome reports
    out, frames only to the reply subjects of attempts it received; few subscriptions and bounded messages
    per connection (``HOSTER_MAX_SUBS``, ``HOSTER_MAX_PAYLOAD``)."""
    publish, subscribe = subjects.hoster_permissions(hoster_id)
    return Permissions(tuple(publish), tuple(subscribe), respond=True, max_subs=HOSTER_MAX_SUBS,
                       max_payload=HOSTER_MAX_PAYLOAD)  # fmt: skip


def platform_adapter_permissions() -> Permissions:
    """A platform-run adapter's confinement: every hoster's subjects, as a hoster's, plus publishing on the
    ingress's reply subjects. A response permission belongs to the connection that received the attempt and
    does not survive a reconnect to another NATS node: with it alone, the attempts a platform adapter had in
    flight when its node died could not answer and waited out their first-byte deadline. A stranger's agent
    keeps the response permission only (``hoster_permissions``)."""
    publish, subscribe = subjects.hoster_permissions("*")
    return Permissions((*publish, subjects.REPLY_ALL), tuple(subscribe), respond=True)


def console_permissions() -> Permissions:
    """The web console's confinement: the management requests to billing and the router, replies on its own
    inbox (``subjects.CONSOLE_INBOX``, which its connection must use as ``inbox_prefix``); nothing else."""
    publish, subscribe = subjects.console_permissions()
    return Permissions(tuple(publish), tuple(subscribe))


def user_jwt(user: KeyPair, name: str, account: KeyPair, permissions: Permissions | None, tags: list[str]) -> str:
    """A user's JWT, signed by its account. ``permissions`` None: everything in the account."""
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1, "tags": tags}
    if permissions is not None:
        nats.update(permissions.claims())
    return encode_jwt({"sub": user.public_key, "name": name, "nats": nats}, account)


def creds_file(jwt: str, user: KeyPair) -> str:
    """A standard NATS credentials file: the user's JWT and its seed."""
    return _CREDS.format(jwt=jwt, seed=user.seed)


def creds_jwt(creds: str) -> str:
    """The user JWT inside a credentials file."""
    lines = creds.splitlines()
    start = next(i for i, line in enumerate(lines) if "BEGIN NATS USER JWT" in line)
    return lines[start + 1].strip()


class AuthStore:
    """The operator, the system and application accounts, and the revocations, in one directory.

    Files: ``operator.nk``, ``sys.nk``, ``app.nk`` (seeds, mode 0600), ``revocations.json``. JWTs are signed
    anew from them whenever needed, so they always carry the current revocations.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def exists(self) -> bool:
        """Whether the authority was created."""
        return (self.directory / "app.nk").exists()

    def init(self) -> AuthStore:
        """Create the operator and both accounts unless they exist."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, prefix in (("operator", nkeys.PREFIX_BYTE_OPERATOR), ("sys", nkeys.PREFIX_BYTE_ACCOUNT),
                             ("app", nkeys.PREFIX_BYTE_ACCOUNT)):  # fmt: skip
            path = self.directory / f"{name}.nk"
            if not path.exists():
                path.touch(mode=0o600)
                path.write_text(KeyPair.create(prefix).seed)
        return self

    def _key(self, name: str) -> KeyPair:
        return KeyPair.from_seed((self.directory / f"{name}.nk").read_text().strip())

    @property
    def operator(self) -> KeyPair:
        """The operator key."""
        return self._key("operator")

    @property
    def system_account(self) -> KeyPair:
        """The system account's key (the server's own events and claim updates)."""
        return self._key("sys")

    @property
    def app_account(self) -> KeyPair:
        """The account every service and hoster connects in."""
        return self._key("app")

    def revocations(self) -> dict[str, int]:
        """Revoked user public keys, with the time of revocation."""
        path = self.directory / "revocations.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def revoke(self, user_public_key: str) -> None:
        """Revoke every JWT of ``user_public_key`` issued until now."""
        revoked = self.revocations()
        # The server revokes JWTs issued at or before this second; one issued in the same second is revoked too.
        revoked[user_public_key] = int(time.time()) + 1
        path = self.directory / "revocations.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(revoked))
        tmp.replace(path)

    def app_account_jwt(self) -> str:
        """The application account's JWT with the current revocations."""
        return account_jwt(self.app_account, APP_ACCOUNT, self.operator, jetstream=True,
                           revocations=self.revocations())  # fmt: skip

    def mint_user(self, name: str, permissions: Permissions | None, tags: list[str] | None = None) -> tuple[str, str]:
        """A new user of the application account: ``(public key, creds file text)``."""
        user = KeyPair.create(nkeys.PREFIX_BYTE_USER)
        jwt = user_jwt(user, name, self.app_account, permissions, tags or [])
        return user.public_key, creds_file(jwt, user)

    def mint_hoster(self, hoster_id: str, name: str) -> tuple[str, str]:
        """Credentials confined to hoster ``hoster_id``: ``(public key, creds file text)``."""
        return self.mint_user(name, hoster_permissions(hoster_id), [f"{HOSTER_TAG}{hoster_id}"])

    def write_creds(self, path: Path, creds: str) -> Path:
        """Write a credentials file readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(creds)
        return path

    def mint_system_user(self) -> str:
        """Credentials of a system-account user: it pushes account updates (revocations) to the servers."""
        user = KeyPair.create(nkeys.PREFIX_BYTE_USER)
        return creds_file(user_jwt(user, "admin", self.system_account, None, []), user)

    def server_config(self, resolver_dir: Path) -> str:
        """The ``operator``/``resolver`` part of nats-server's configuration for this authority.

        The full resolver keeps pushed account JWTs in ``resolver_dir``; the preload makes a fresh server
        start with the current ones.
        """
        system = self.system_account
        sys_jwt = account_jwt(system, SYSTEM_ACCOUNT, self.operator, jetstream=False)
        return (
            f"operator: {operator_jwt(self.operator, 'computeshare', system.public_key)}\n"
            f"system_account: {system.public_key}\n"
            f'resolver: {{ type: full, dir: "{resolver_dir}", allow_delete: false, interval: "2m", timeout: "2s" }}\n'
            "resolver_preload: {\n"
            f"  {system.public_key}: {sys_jwt}\n"
            f"  {self.app_account.public_key}: {self.app_account_jwt()}\n"
            "}\n"
        )


async def push_account_update(nats_url: str, auth: AuthStore, timeout_s: float = 5.0) -> None:
    """Send the application account's current JWT (its revocations included) to the servers, as a system
    account user; a server disconnects the revoked users it has and refuses them from then on."""
    import tempfile

    import nats

    with tempfile.NamedTemporaryFile("w", suffix=".creds") as creds:
        creds.write(auth.mint_system_user())
        creds.flush()
        nc = await nats.connect(nats_url.split(","), user_credentials=creds.name, connect_timeout=timeout_s,
                                allow_reconnect=False)  # fmt: skip
        try:
            reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", auth.app_account_jwt().encode(), timeout=timeout_s)
        finally:
            await nc.close()
    answer = orjson.loads(reply.data).get("data") or {}
    if answer.get("code") != 200:
        raise RuntimeError(f"the NATS server refused the account update: {answer}")


def service_creds(auth: AuthStore, directory: Path, name: str, module: str) -> Path:
    """The credentials file of process ``name`` running ``services.<module>`` (minted once): a platform hoster
    adapter is confined like a hoster (to every hoster's subjects; ``platform_adapter_permissions``), the web
    console to its management requests
    (``console_permissions``), the other services are the platform."""
    path = directory / f"{name}.creds"
    if not path.exists():
        if module == "hoster_adapter":
            _, creds = auth.mint_user(name, platform_adapter_permissions())
        elif module == "console":
            _, creds = auth.mint_user(name, console_permissions())
        else:
            _, creds = auth.mint_user(name, None)
        auth.write_creds(path, creds)
    return path
