"""An aiohttp server on a thread of its own (its own event loop) on ``127.0.0.1:port``, with a client session
for what it relays to: the base of the tests' dishonest upstreams (``lying_upstream``, ``switching_upstream``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

import aiohttp
from aiohttp import web


class ThreadedProxy:
    """Serves the routes ``add_routes`` adds, from ``start`` (once the port is bound) to ``stop``."""

    name = "proxy"
    timeout_s = 120.0

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve, once the port is bound."""
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the {self.name} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and close the connections it relays on."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        self.add_routes(app)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
            self._session = session
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                self._ready.set()
                await self._stopped.wait()
            finally:
                await runner.cleanup()
