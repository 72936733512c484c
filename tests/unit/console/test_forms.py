"""What the console reads of a request before its CSRF check: only a small URL-encoded form (declared or
streamed), a few short fields, no file; and no redirect ever written with the request's Host."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from services.console.app import MAX_FORM_BYTES, build_app
from services.console.settings import PUBLISHED_SECRETS, ConsoleSettings

SECRET = "s" * 48
FORM = {"content-type": "application/x-www-form-urlencoded"}


def console() -> FastAPI:
    # Nothing connects before the lifespan: the routes tested here refuse before they would ask billing.
    return build_app(ConsoleSettings(session_secret=SECRET, metrics_port=0))


class Sender:
    """A body streamed without a length, counting what the console pulled of it."""

    def __init__(self, total: int, chunk: int = 4096) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"a=" + b"x" * (self.chunk - 3) + b"&"


async def post(path: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=console()), base_url="http://console") as browser:
        return await browser.post(path, **kwargs)  # type: ignore[arg-type]


async def test_a_form_without_the_sessions_token_is_still_a_403() -> None:
    answer = await post("/console/signin", data={"kind": "account", "secret": "ngm_x"})
    assert answer.status_code == 403


async def test_only_url_encoded_forms_are_read() -> None:
    files = {"upload": ("big.bin", b"\0" * 1024, "application/octet-stream")}
    assert (await post("/console/signin", data={"kind": "account"}, files=files)).status_code == 415
    assert (await post("/console/signin", json={"kind": "account"})).status_code == 415
    assert (await post("/console/keys", content=b"a=1")).status_code == 415  # no content type


async def test_a_body_declared_over_the_limit_is_a_413_before_a_byte_is_read() -> None:
    sender = Sender(10 * 1024 * 1024)
    answer = await post("/console/signin", content=sender, headers={**FORM, "content-length": str(sender.total)})
    assert answer.status_code == 413
    assert "Form refused" in answer.text
    assert sender.sent == 0


async def test_a_body_streamed_past_the_limit_is_cut_off_there() -> None:
    sender = Sender(10 * 1024 * 1024)
    answer = await post("/console/signin", content=sender, headers=FORM)
    assert answer.status_code == 413
    assert sender.sent <= MAX_FORM_BYTES + sender.chunk


@pytest.mark.parametrize(
    "body",
    [
        "&".join(f"f{i}=1" for i in range(50)).encode(),  # too many fields
        b"secret=" + b"x" * 8 * 1024,  # one field too long (the body itself is under the limit)
    ],
)
async def test_a_form_past_the_field_limits_is_a_400(body: bytes) -> None:
    assert len(body) < MAX_FORM_BYTES
    answer = await post("/console/signin", content=body, headers=FORM)
    assert answer.status_code == 400
    assert "Form refused" in answer.text


async def test_a_trailing_slash_is_not_redirected_to_the_requests_host() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=console()), base_url="http://10.0.0.7:8090") as c:
        for path in ("/console/account/", "/console/keys/", "/console/static"):
            answer = await c.get(path, headers={"host": "10.0.0.7:8090"})
            assert answer.status_code == 404, path
            assert "location" not in answer.headers


def test_a_published_session_secret_is_refused_unless_the_console_is_a_laptops() -> None:
    [published] = PUBLISHED_SECRETS
    with pytest.raises(ValidationError, match="CS_CONSOLE_ALLOW_DEV_SECRET"):
        ConsoleSettings(session_secret=published)
    assert ConsoleSettings(session_secret=published, allow_dev_secret=True).allow_dev_secret
    assert ConsoleSettings(session_secret=SECRET).session_secret.get_secret_value() == SECRET


def test_a_published_session_secret_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    [published] = PUBLISHED_SECRETS
    monkeypatch.setenv("CS_CONSOLE_SESSION_SECRET", published)
    with pytest.raises(ValidationError):
        ConsoleSettings()
    monkeypatch.setenv("CS_CONSOLE_ALLOW_DEV_SECRET", "true")
    assert ConsoleSettings().allow_dev_secret
