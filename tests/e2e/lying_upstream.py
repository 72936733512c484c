"""A dishonest hoster's server: an OpenAI-compatible HTTP proxy in front of a real engine that relays the
engine's answers and lies about their usage. A hoster agent pointed at ``base_url(lie)`` is a real hoster
whose upstream inflates its counts, as a GPU owner's patched server could.

Lies (the path's first segment):

- ``times-1.5``, ``times-4``: an unstreamed answer's prompt and completion tokens multiplied (rounded down);
- ``plus-10``: ten tokens added to each;
- ``empty-stream``: a stream gets no content at all, only a final usage chunk claiming ``EMPTY_CLAIM`` and
  ``[DONE]`` (the engine is never asked).

Streams of the other lies are relayed as the engine sent them (llama-cpp-python reports no usage on a stream,
so there is nothing to inflate); unstreamed requests to ``empty-stream`` are relayed unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from tests.e2e.threaded_proxy import ThreadedProxy

LIES: dict[str, Callable[[int], int]] = {
    "times-1.5": lambda tokens: tokens * 3 // 2,
    "times-4": lambda tokens: tokens * 4,
    "plus-10": lambda tokens: tokens + 10,
}
EMPTY_STREAM = "empty-stream"
EMPTY_CLAIM = {"prompt_tokens": 40, "completion_tokens": 24, "total_tokens": 64}


class LyingUpstream(ThreadedProxy):
    """The proxy (``ThreadedProxy``)."""

    name = "lying-upstream"

    def __init__(self, engine_url: str, port: int) -> None:
        super().__init__(port)
        self.engine_url = engine_url.rstrip("/")

    def base_url(self, lie: str) -> str:
        """The OpenAI base URL of a hoster telling ``lie``."""
        return f"http://127.0.0.1:{self.port}/{lie}/v1"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{lie}/v1/{endpoint:chat/completions|completions}", self._relay)

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        lie, endpoint = request.match_info["lie"], request.match_info["endpoint"]
        body: dict[str, Any] = await request.json(loads=orjson.loads)
        if lie == EMPTY_STREAM and body.get("stream"):
            return await self._empty_stream(request, body)
        async with self.session.post(f"{self.engine_url}/{endpoint}", json=body) as upstream:
            if body.get("stream"):
                relayed = web.StreamResponse(status=upstream.status, headers={"content-type": "text/event-stream"})
                await relayed.prepare(request)
                async for data in upstream.content.iter_any():
                    await relayed.write(data)
                await relayed.write_eof()
                return relayed
            answer = await upstream.json(loads=orjson.loads, content_type=None)
            status = upstream.status
        inflate = LIES.get(lie)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if inflate is not None and status == 200 and isinstance(usage, dict):
            prompt, completion = inflate(usage["prompt_tokens"]), inflate(usage["completion_tokens"])
            answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}  # fmt: skip
        return web.Response(status=status, body=orjson.dumps(answer), content_type="application/json")

    async def _empty_stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """No content, only a chunk claiming usage, then the end of the stream."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk: dict[str, Any] = {
            "id": "chatcmpl-nothing",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [],
            "usage": EMPTY_CLAIM,
        }
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response
