"""Management keys through the public API of a real stack (simulated hoster, real NATS and PostgreSQL): made
with the ``computeshare`` command, they list, create, limit and revoke the account's keys and read the
account; an inference key never manages, a management key never calls models, and one account's management
key never reaches another account."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.test_money import settled

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


def call(stack: Stack, method: str, path: str, key: str, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:  # fmt: skip
    headers = {"authorization": f"Bearer {key}", **(headers or {})}
    return httpx.request(method, f"{stack.config.api_base}{path}", headers=headers, timeout=10, **kwargs)


def chat(stack: Stack, key: str) -> httpx.Response:
    return call(stack, "POST", "/chat/completions", key, json={"model": DEMO_MODEL, "messages": MESSAGES})


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def account(stack: Stack) -> tuple[str, str, str]:
    """``(account id, inference key, management key)`` of an account with credits."""
    account_id, key = stack.create_account(credits="100")
    return account_id, key, stack.create_management_key(account_id, label="ops")


def test_a_management_key_creates_a_key_that_works_with_the_sdk_lists_and_limits_it(
    stack: Stack, account: tuple[str, str, str]
) -> None:
    _, _, manager = account
    created = call(stack, "POST", "/keys", manager, json={"label": "my app", "tpm": 100_000})
    assert created.status_code == 201, created.text
    body = created.json()
    key, info = body["key"], body["data"]
    assert key.startswith("ngk_")
    assert (info["label"], info["kind"], info["rpm"], info["tpm"], info["revoked"]) == ("my app", "inference", None,
                                                                                          100_000, False)  # fmt: skip
    assert info["last_used_at"] is None

    with openai.OpenAI(api_key=key, base_url=stack.config.api_base) as client:
        completion = client.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content

    listing = call(stack, "GET", "/keys", manager)
    assert listing.status_code == 200
    keys = {k["id"]: k for k in listing.json()["data"]}
    assert keys[info["id"]]["last_used_at"] is not None  # its request was admitted
    assert {k["kind"] for k in keys.values()} == {"inference", "management"}
    assert all("key" not in k for k in keys.values())  # never the key itself again
    shown = call(stack, "GET", f"/keys/{info['id']}", manager)
    assert shown.json()["data"]["label"] == "my app"

    # rpm 1: the second request within the minute is refused.
    patched = call(stack, "PATCH", f"/keys/{info['id']}", manager, json={"rpm": 1, "label": None})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["data"]["rpm"], patched.json()["data"]["tpm"]) == (1, 100_000)
    assert patched.json()["data"]["label"] is None
    deadline = time.monotonic() + 5
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(chat(stack, key).status_code)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429, statuses
    cleared = call(stack, "PATCH", f"/keys/{info['id']}", manager, json={"rpm": None})
    assert cleared.json()["data"]["rpm"] is None


def test_a_revoked_key_fails_within_5_seconds(stack: Stack, account: tuple[str, str, str]) -> None:
    _, _, manager = account
    key_id_and_key = call(stack, "POST", "/keys", manager, json={}).json()
    key = key_id_and_key["key"]
    assert chat(stack, key).status_code == 200  # cached as valid now
    revoked = call(stack, "DELETE", f"/keys/{key_id_and_key['data']['id']}", manager)
    assert revoked.status_code == 200
    assert revoked.json()["deleted"] is True
    assert revoked.json()["data"]["revoked"] is True
    started = time.monotonic()
    while chat(stack, key).status_code != 401:
        assert time.monotonic() - started < 5, "the revoked key still works"
        time.sleep(0.1)
    assert "revoked" in error_of(chat(stack, key))["message"]


def test_the_account_summary_and_usage_per_day(stack: Stack) -> None:
    account_id, key = stack.create_account(credits="7")
    manager = stack.create_management_key(account_id)
    assert chat(stack, key).status_code == 200
    summary = call(stack, "GET", "/account", manager)
    assert summary.status_code == 200
    data = summary.json()
    assert (data["object"], data["id"], data["daily_cap"]) == ("account", account_id, None)
    assert data["balance"] <= 7
    deadline = time.monotonic() + 20
    while True:
        days = call(stack, "GET", "/account/usage?days=3", manager).json()["data"]
        if days[-1]["spend"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(days) == 3
    assert [d["requests"] for d in days] == [0, 0, 1]
    assert days[-1]["prompt_tokens"] > 0
    assert days[-1]["completion_tokens"] > 0
    assert days[-1]["spend"] > 0
    assert call(stack, "GET", "/account/usage?days=0", manager).status_code == 400


async def test_an_inference_key_lists_only_its_own_usage_and_the_management_key_the_accounts(stack: Stack) -> None:
    """Two inference keys of one account each read only their own requests on ``/v1/usage`` (as on
    ``/v1/generation``); the account's management key reads them all."""
    account_id, first = stack.create_account(credits="10")
    second = stack.computeshare("key", "create", account_id)["key"]
    manager = stack.create_management_key(account_id)
    made: dict[str, list[str]] = {first: [], second: []}
    for key in (first, second, first):
        response = await asyncio.to_thread(chat, stack, key)
        assert response.status_code == 200, response.text
        made[key].append(response.json()["id"])
    await settled(stack, account_id)  # every request recorded, those admitted on a credit lease included

    def listed(key: str) -> list[str]:
        response = call(stack, "GET", "/usage", key)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["data"]]

    assert listed(first) == made[first][::-1]  # newest first
    assert listed(second) == made[second]
    assert sorted(listed(manager)) == sorted(made[first] + made[second])


def test_an_inference_key_never_manages_and_a_management_key_never_calls_models(
    stack: Stack, account: tuple[str, str, str]
) -> None:
    _, key, manager = account
    for method, path in (("GET", "/keys"), ("POST", "/keys"), ("GET", "/account"), ("DELETE", "/keys/key_x")):
        refused = call(stack, method, path, key, json={})
        assert refused.status_code == 403, (method, path, refused.text)
        assert error_of(refused)["code"] == "not_a_management_key"
    for path, body in (
        ("/chat/completions", {"model": DEMO_MODEL, "messages": MESSAGES}),
        ("/completions", {"model": DEMO_MODEL, "prompt": "hi"}),
        ("/embeddings", {"model": DEMO_MODEL, "input": "hi"}),
    ):
        refused = call(stack, "POST", path, manager, json=body)
        assert refused.status_code == 403, (path, refused.text)
        assert error_of(refused)["code"] == "management_key_not_allowed"
    with (
        openai.OpenAI(api_key=manager, base_url=stack.config.api_base) as client,
        pytest.raises(openai.PermissionDeniedError),
    ):
        client.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES)
    key_doc = call(stack, "GET", "/key", manager).json()["data"]
    assert key_doc["is_management_key"] is True


def test_one_accounts_management_key_never_reaches_another_account(stack: Stack) -> None:
    a_account, _ = stack.create_account(credits="10")
    a_manager = stack.create_management_key(a_account)
    b_account, b_key = stack.create_account(credits="10")
    b_manager = stack.create_management_key(b_account)
    b_key_id = next(k["id"] for k in call(stack, "GET", "/keys", b_manager).json()["data"] if k["kind"] == "inference")
    answer = chat(stack, b_key)
    assert answer.status_code == 200
    b_request = answer.headers["x-request-id"]

    cases: list[tuple[str, dict[str, Any]]] = [("GET", {}), ("PATCH", {"json": {"rpm": 1}}), ("DELETE", {})]
    for method, kwargs in cases:
        response = call(stack, method, f"/keys/{b_key_id}", a_manager, **kwargs)
        assert response.status_code == 404, (method, response.text)
        assert error_of(response)["code"] == "key_not_found"
    assert all(k["id"] != b_key_id for k in call(stack, "GET", "/keys", a_manager).json()["data"])
    assert chat(stack, b_key).status_code == 200  # neither revoked nor limited by A

    # B's routing record: B's management key reads it (once recorded), A's gets the same 404 as for nothing.
    deadline = time.monotonic() + 20
    while (own := call(stack, "GET", f"/generation/{b_request}", b_manager)).status_code != 200:
        assert time.monotonic() < deadline, own.text
        time.sleep(0.2)
    assert own.json()["id"] == b_request
    stranger = call(stack, "GET", f"/generation/{b_request}", a_manager)
    assert stranger.status_code == 404
    assert error_of(stranger)["code"] == "generation_not_found"
    assert call(stack, "GET", "/account", a_manager).json()["id"] == a_account


def test_a_management_body_is_small_json_read_only_after_the_key_is_checked(
    stack: Stack, account: tuple[str, str, str]
) -> None:
    """4 KiB is many times a label and two limits: past it a 413, declared or streamed, and nothing is
    created; a body not sent as JSON is a 415 (unit tests: without a key, not a byte of it is read)."""
    _, _, manager = account
    before = call(stack, "GET", "/keys", manager).json()["data"]
    padded = {"label": "big", "rpm": 5, "padding": "x" * 8 * 1024}
    for method, path in (("POST", "/keys"), ("PATCH", f"/keys/{before[0]['id']}")):
        declared = call(stack, method, path, manager, json=padded)
        assert declared.status_code == 413, declared.text
        assert error_of(declared)["code"] == "request_too_large"

        def streamed() -> Any:
            yield b'{"label": "'
            for _ in range(64):
                yield b"x" * 1024

        answer = call(stack, method, path, manager, content=streamed(), headers={"content-type": "application/json"})
        assert answer.status_code == 413, answer.text
        assert error_of(answer)["code"] == "request_too_large"
        not_json = call(stack, method, path, manager, content=b"label=x", headers={"content-type": "text/plain"})
        assert not_json.status_code == 415
        assert error_of(not_json)["code"] == "unsupported_media_type"
    # Over the ingress's own limit: refused on its declared length alone, before a byte of it is sent.
    assert declared_too_large(stack, "/v1/keys", manager).startswith(b"HTTP/1.1 413")
    assert b'"request_too_large"' in declared_too_large(stack, "/v1/keys", manager)
    assert call(stack, "GET", "/keys", manager).json()["data"] == before
    # A body that is not a key's is a 400 naming what is wrong, as before.
    wrong = call(stack, "POST", "/keys", manager, json={"rpm": 0})
    assert (wrong.status_code, error_of(wrong)["param"]) == (400, "rpm")
    broken = call(stack, "POST", "/keys", manager, content=b"[", headers={"content-type": "application/json"})
    assert broken.status_code == 400


def declared_too_large(stack: Stack, path: str, key: str) -> bytes:
    """The answer to a request that declares 50 MB and sends none of it."""
    port = int(stack.config.api_base.split(":")[-1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n")  # fmt: skip
        connection.sendall(head.encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer
