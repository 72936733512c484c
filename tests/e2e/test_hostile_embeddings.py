"""A hoster's own agent (a stranger's, modified) answering embeddings with vectors other than those asked for:
base64 where floats were asked, floats where base64 was, a width other than ``dimensions``, inconsistent
widths, NaN inside base64. The ingress checks the vectors itself, by the adapter's rule: the client gets the
error, never the wrong vectors."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.msg import Msg

from libs.contracts import frames
from libs.contracts.common import EMBEDDINGS, Usage
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import AttemptDispatch
from libs.devstack.stack import Stack, throwaway_config
from tests.e2e.test_money import settled
from tests.integration.request_path.scripted_hoster import ScriptedHoster
from tests.waits import until_stack_router_hears

pytestmark = pytest.mark.e2e


class EmbeddingHoster(ScriptedHoster):
    """A scripted hoster whose one model is an embedding model."""

    def heartbeat(self) -> HosterHeartbeat:
        beat = super().heartbeat()
        beat.hosters[0].models[0].endpoints = [EMBEDDINGS]
        return beat


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Only the network: the one hoster of each test is the test's own agent."""
    running = Stack(throwaway_config()).start()
    yield running
    running.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    account_id, key = stack.create_account(credits="10")
    async with httpx.AsyncClient(
        base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        yield http, account_id
    await settled(stack, account_id)


def packed(*numbers: float) -> str:
    """Base64 of little-endian float32s, as OpenAI sends ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(numbers)}f", *numbers)).decode()


async def serving(stack: Stack, tmp_path: Path, model: str, vectors: list[Any]) -> EmbeddingHoster:
    """An agent serving ``model`` that answers every request with ``vectors``, one per input."""

    async def answer(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        body = {"object": "list", "data": data, "model": dispatch.model, "usage": {"prompt_tokens": 2}}
        await hoster.nc.publish(msg.reply, frames.encode(frames.COMPLETION, dispatch.attempt, 0, orjson.dumps(body)))
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=2, completion_tokens=0, total_tokens=2), 1)

    hoster = await EmbeddingHoster.connect(stack.nats_url, stack.auth, tmp_path, model, answer)
    await until_stack_router_hears(stack, hoster.hoster_id)
    return hoster


@pytest.mark.parametrize(
    ("asked", "vectors"),
    [
        ({"encoding_format": "base64"}, [[0.5, 0.5], [0.5, 0.5]]),  # floats, base64 asked for
        ({}, [packed(0.5, 0.5), packed(0.5, 0.5)]),  # base64, floats asked for
        ({"dimensions": 4}, [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]),  # not the dimensions asked for
        ({"encoding_format": "base64", "dimensions": 2}, [packed(1, 2, 3), packed(1, 2, 3)]),
        ({"encoding_format": "base64"}, [packed(1, 2), packed(1)]),  # widths differ
        ({"encoding_format": "base64"}, [packed(1, float("nan")), packed(1, 2)]),
        ({"encoding_format": "base64"}, ["not base64!", packed(1, 2)]),
    ],
)  # fmt: skip
async def test_vectors_other_than_those_asked_for_never_reach_the_client(
    stack: Stack,
    client: tuple[httpx.AsyncClient, str],
    tmp_path: Path,
    asked: dict[str, Any],
    vectors: list[Any],
) -> None:
    http, _ = client
    model = f"hostile-embedding-{tmp_path.name}"
    hoster = await serving(stack, tmp_path, model, vectors)
    try:
        response = await http.post("/embeddings", json={"model": model, "input": ["a", "b"], **asked})
        assert response.status_code == 502, response.text
        assert response.headers["x-computeshare-hoster"] == hoster.hoster_id
        assert response.json()["error"]["code"] == "invalid_hoster_response"
    finally:
        await hoster.close()


async def test_the_vectors_asked_for_pass(stack: Stack, client: tuple[httpx.AsyncClient, str], tmp_path: Path) -> None:
    """The same agent answering as asked is relayed: the refusals above are of the vectors, not of the agent."""
    http, _ = client
    model = f"honest-embedding-{tmp_path.name}"
    hoster = await serving(stack, tmp_path, model, [packed(0.25, -1.5), packed(1, 2)])
    try:
        response = await http.post(
            "/embeddings", json={"model": model, "input": ["a", "b"], "encoding_format": "base64", "dimensions": 2}
        )
        assert response.status_code == 200, response.text
        first = response.json()["data"][0]["embedding"]
        assert struct.unpack("<2f", base64.b64decode(first)) == (0.25, -1.5)
    finally:
        await hoster.close()
