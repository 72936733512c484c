"""NATS as the ingress sees it, answered in process (the handler tests' bus): subscriptions kept by subject,
and a routed request answered as a router and a hoster would (``accept``). Each test's bus adds its answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from libs.contracts import subjects
from libs.contracts.routing import RouteAccepted


class Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data


class Subscription:
    async def unsubscribe(self) -> None:
        return None


class InProcessBus:
    max_payload = 1024 * 1024
    is_connected = True

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[Msg], Awaitable[None]]] = {}

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]], **_: Any) -> Subscription:
        self.callbacks[subject] = cb
        return Subscription()

    async def flush(self) -> None:
        return None

    def accept(self, subject: str, route: dict[str, Any], answer: Callable[[str], list[Msg]]) -> Msg:
        """A router's acceptance of ``route`` by hoster ``h1``; the frames ``answer`` gives for the offer's reply
        subject are delivered to the ingress's inbox once the acceptance is read."""
        on_reply = self.callbacks[route["reply_subject"].rpartition(".")[0] + ".>"]  # the ingress's inbox
        offer = subjects.offer_subject(route["reply_subject"], 1, "t")
        for frame in answer(offer):
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, on_reply(frame))
        accepted = RouteAccepted(hoster_id="h1", model="m", attempt=1, reply_subject=offer)
        return Msg(subject, accepted.model_dump_json().encode())
