"""The ingress's pass-through to the console: requests go on whole, answers come back whole (every cookie),
and nothing of one browser's session sticks to the proxy for the next browser."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.ingress.console_proxy import ConsoleProxy


def console_stub() -> FastAPI:
    """A console that echoes what it received and sets two cookies on sign-in."""
    app = FastAPI()

    @app.api_route("/console/{path:path}", methods=["GET", "POST"])
    async def echo(path: str, request: Request) -> Response:
        response = JSONResponse(
            {
                "path": request.url.path,
                "query": request.url.query,
                "method": request.method,
                "body": (await request.body()).decode(),
                "cookie": request.headers.get("cookie"),
                "forwarded_proto": request.headers.get("x-forwarded-proto"),
                "forwarded_for": request.headers.get("x-forwarded-for"),
            }
        )
        if path == "signin":
            response.set_cookie("session", "alice", httponly=True)
            response.set_cookie("other", "x")
        return response

    return app


async def proxied() -> tuple[FastAPI, ConsoleProxy]:
    front = FastAPI()
    proxy = ConsoleProxy("http://console:8090", transport=httpx.ASGITransport(app=console_stub()))
    await proxy.open()
    proxy.install(front)
    return front, proxy


async def test_a_request_reaches_the_console_whole_and_its_answer_comes_back_with_every_cookie() -> None:
    front, proxy = await proxied()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://gw") as browser:
            answer = await browser.post("/console/signin?next=%2Fconsole", data={"a": "1"},
                                        headers={"cookie": "session=old"})  # fmt: skip
        assert answer.status_code == 200
        echoed = answer.json()
        assert echoed["path"] == "/console/signin"
        assert echoed["query"] == "next=%2Fconsole"
        assert (echoed["method"], echoed["body"], echoed["cookie"]) == ("POST", "a=1", "session=old")
        assert echoed["forwarded_proto"] == "http"
        assert sorted(answer.headers.get_list("set-cookie"))[0].startswith("other=x")
        assert len(answer.headers.get_list("set-cookie")) == 2
    finally:
        await proxy.close()


async def test_one_browsers_session_cookie_never_reaches_another_browsers_request() -> None:
    front, proxy = await proxied()
    try:
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as alice:
            await alice.post("/console/signin")
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as bob:
            echoed = (await bob.get("/console/network")).json()
        assert echoed["cookie"] is None
    finally:
        await proxy.close()


async def test_a_console_that_does_not_answer_is_a_502() -> None:
    front = FastAPI()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    proxy = ConsoleProxy("http://console:8090", transport=httpx.MockTransport(refuse))
    await proxy.open()
    proxy.install(front)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://gw") as browser:
            assert (await browser.get("/console")).status_code == 502
    finally:
        await proxy.close()
