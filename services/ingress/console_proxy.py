"""``/console/*`` passed through to the console service (``CS_INGRESS_CONSOLE_URL``), so one address serves the
API and the console on a laptop (``make run``). Off the API's hot path: nothing here runs for ``/v1``.
In Kubernetes and compose the load balancer routes ``/console`` to the console's own Service instead."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

# Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1), and the host (the
# console's own is set by the client).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
METHODS = ["GET", "HEAD", "POST"]


class ConsoleProxy:
    """A streaming reverse proxy to one console URL; ``open``/``close`` belong to the app's lifespan."""

    def __init__(self, console_url: str, timeout_s: float = 30.0, transport: httpx.AsyncBaseTransport | None = None):
        self._base = console_url.rstrip("/")
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        """Create the connection pool. Its cookie jar keeps nothing: the client is shared by every browser, and
        one browser's session cookie must never ride along with another's requests."""
        keep_none = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False, cookies=keep_none,
                                         transport=self._transport)  # fmt: skip

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def install(self, app: FastAPI) -> None:
        """Route ``/console`` and everything under it here (kept out of the OpenAPI document)."""
        for path in ("/console", "/console/{path:path}"):
            app.add_api_route(path, self.forward, methods=METHODS, include_in_schema=False)

    async def forward(self, request: Request) -> Response:
        """Send the request on as it came (path, query, headers, body) plus ``X-Forwarded-*``; stream the answer
        back with every header (each ``Set-Cookie`` kept)."""
        if self._client is None:
            return Response("The console is not reachable right now.", status_code=503, media_type="text/plain")
        headers = [
            (k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP and not k.startswith("x-forwarded-")
        ]
        client = request.client.host if request.client is not None else ""
        headers += [
            ("x-forwarded-for", client),
            ("x-forwarded-proto", request.url.scheme),
            ("x-forwarded-host", request.headers.get("host", "")),
        ]
        url = httpx.URL(self._base + request.url.path, query=request.url.query.encode())
        outgoing = self._client.build_request(request.method, url, headers=headers, content=request.stream())
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError:
            return Response("The console is not reachable right now.", status_code=502, media_type="text/plain")
        response = StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                     background=BackgroundTask(answer.aclose))  # fmt: skip
        response.raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.multi_items()
            if k.lower() not in HOP_BY_HOP
        ]
        return response
