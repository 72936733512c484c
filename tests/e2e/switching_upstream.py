"""A dishonest hoster's server that serves the weights it claims only when it guesses it is being checked: an
OpenAI-compatible HTTP proxy in front of two real engines, the claimed model's (``real``) and a cheaper
substitute's, choosing per request by what a hoster can see of it.

Rules (the path's first segment):

- ``temperature-zero``: the real model only for a request with ``temperature`` 0, the substitute otherwise;
- ``looks-checked``: the real model for whatever a checker could be expected to send, the substitute for the
  rest: a conversation of the prompt pool shipped with the repository (``services/router/prompts.jsonl``) or
  the old fixed probe prompt, a greedy request asking for 5 top logprobs, a request for 16 tokens, or one that
  comes within a second of the last (a checker's burst).

Every request is relayed unchanged to the engine chosen, and its answer relayed back as the engine sent it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tests.e2e.threaded_proxy import ThreadedProxy

SHIPPED_POOL = Path(__file__).resolve().parents[2] / "services" / "router" / "prompts.jsonl"
OLD_PROBE_PROMPT = "Reply with one short sentence about the sea."
RULES = ("temperature-zero", "looks-checked")


def shipped_prompts() -> frozenset[str]:
    """Every user message of the shipped pool (what a hoster that read the repository knows)."""
    out: set[str] = set()
    for line in SHIPPED_POOL.read_text().splitlines():
        if not line.strip():
            continue
        doc = orjson.loads(line)
        messages = [{"role": "user", "content": doc}] if isinstance(doc, str) else doc
        out.update(m["content"] for m in messages if m["role"] == "user")
    return frozenset(out)


class Guesser:
    """Decides, per request, whether to serve the real model (see the module's docstring)."""

    def __init__(self) -> None:
        self.known = shipped_prompts() | {OLD_PROBE_PROMPT}
        self.last_at = 0.0
        self.served: dict[str, int] = {"real": 0, "substitute": 0}

    def real(self, rule: str, body: dict[str, Any], now: float) -> bool:
        temperature = body.get("temperature")
        if rule == "temperature-zero":
            return temperature == 0
        messages = body.get("messages") or []
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        burst, self.last_at = now - self.last_at < 1.0, now
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        return (
            any(u in self.known for u in users)
            or (temperature == 0 and body.get("top_logprobs") == 5)
            or limit == 16
            or burst
        )


class SwitchingUpstream(ThreadedProxy):
    """The proxy (``ThreadedProxy``)."""

    name = "switching-upstream"
    timeout_s = 600.0

    def __init__(self, real_url: str, substitute_url: str, port: int) -> None:
        super().__init__(port)
        self.real_url = real_url.rstrip("/")
        self.substitute_url = substitute_url.rstrip("/")
        self.guessers = {rule: Guesser() for rule in RULES}

    def base_url(self, rule: str) -> str:
        """The OpenAI base URL of a hoster following ``rule``."""
        return f"http://127.0.0.1:{self.port}/{rule}/v1"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{rule}/v1/{path:.*}", self._relay)

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        rule, path = request.match_info["rule"], request.match_info["path"]
        raw = await request.read()
        base = self.real_url
        if request.method == "POST" and rule in self.guessers:
            body = orjson.loads(raw)
            real = self.guessers[rule].real(rule, body, time.monotonic())
            self.guessers[rule].served["real" if real else "substitute"] += 1
            base = self.real_url if real else self.substitute_url
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self.session.request(request.method, f"{base}/{path}", data=raw or None, headers=headers) as up:
            response = web.StreamResponse(status=up.status, headers={"content-type": up.content_type})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
