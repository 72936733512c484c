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

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

LIES: dict[str, Callable[[int], int]] = {
    "times-1.5": lambda tokens: tokens * 3 // 2,
    "times-4": lambda tokens: tokens * 4,
    "plus-10": lambda tokens: tokens + 10,
}
EMPTY_STREAM = "empty-stream"
EMPTY_CLAIM = {"prompt_tokens": 40, "completion_tokens": 24, "total_tokens": 64}


class LyingUpstream:
    """The proxy, served from a thread of its own (its own event loop) on ``127.0.0.1:port``."""

    def __init__(self, engine_url: str, port: int) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lying-upstream", daemon=True)
        self._error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None

    def base_url(self, lie: str) -> str:
        """The OpenAI base URL of a hoster telling ``lie``."""
        return f"http://127.0.0.1:{self.port}/{lie}/v1"

    def start(self) -> LyingUpstream:
        """Serve, once the port is bound."""
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the lying upstream did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and close the connections to the engine."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{lie}/v1/{endpoint:chat/completions|completions}", self._relay)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            self._session = session
            runner = web.AppRunner(app)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                self._ready.set()
                await self._stopped.wait()
            finally:
                await runner.cleanup()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        lie, endpoint = request.match_info["lie"], request.match_info["endpoint"]
        body: dict[str, Any] = await request.json(loads=orjson.loads)
        if lie == EMPTY_STREAM and body.get("stream"):
            return await self._empty_stream(request, body)
        assert self._session is not None
        async with self._session.post(f"{self.engine_url}/{endpoint}", json=body) as upstream:
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
