"""The process-side cache of registered tokenizers, with billing's answers played by a function (pure unit
tests: the real subject through billing's process is tests/integration/billing/test_model_registry.py)."""

from __future__ import annotations

import asyncio

import pytest
from tokenizers import Tokenizer

from libs.contracts.models import PART_BYTES, FetchTokenizer, TokenizerPart, pack_tokenizer_bundle
from libs.tokens import RegisteredTokenizers, TokenizerFetchError, TokenizerLru
from libs.tokens.cache import RETRY_AFTER_FAILURE_S
from libs.tokens.model import TokenizerFiles, sha256_hex
from tests.unit.tokens import trained


class Billing:
    """Answers ``billing.tokenizer.fetch`` as billing does, from a dict of registered files."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[int, TokenizerFiles]] = {}
        self.asked: list[FetchTokenizer] = []
        self.down = False
        self.corrupt = False

    async def request(self, subject: str, data: bytes, timeout_s: float) -> bytes:
        await asyncio.sleep(0)
        if self.down:
            raise TimeoutError("no answer")
        query = FetchTokenizer.model_validate_json(data)
        self.asked.append(query)
        if query.model not in self.models:
            return TokenizerPart(status="not_registered", model=query.model).model_dump_json().encode()
        version, files = self.models[query.model]
        bundle = pack_tokenizer_bundle(files.tokenizer_json, files.tokenizer_config_json)
        digest = sha256_hex(bundle)
        if query.known_bundle_sha256 == digest:
            return TokenizerPart(status="unchanged", model=query.model, version=version).model_dump_json().encode()
        part = bundle[query.offset : query.offset + PART_BYTES]
        answer = TokenizerPart(
            status="registered", model=query.model, version=version, tokenizer_sha256=files.tokenizer_sha256,
            config_sha256=files.config_sha256, bundle_sha256=digest, bundle_size=len(bundle), offset=query.offset,
            data=part[:-1] + b"x" if self.corrupt else part,
        )  # fmt: skip
        return answer.model_dump_json().encode()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return trained.train_tokenizer(vocab_size=600, lines=500)


async def test_one_fetch_per_model_and_bundle_shared_by_concurrent_callers(tokenizer: Tokenizer) -> None:
    billing = Billing()
    billing.models["m"] = (1, trained.files(tokenizer, trained.config()))
    cache = RegisteredTokenizers(billing.request, refresh_s=60)
    first, second = await asyncio.gather(cache.get("m"), cache.get("m"))
    assert first is not None
    assert first is second
    assert (cache.fetches, len(billing.asked)) == (1, 1)
    assert await cache.get("m") is first
    assert len(billing.asked) == 1


async def test_an_unregistered_model_is_remembered_and_then_asked_again() -> None:
    clock = [0.0]
    billing = Billing()
    cache = RegisteredTokenizers(billing.request, refresh_s=5, clock=lambda: clock[0])
    assert await cache.get("nobody") is None
    assert await cache.get("nobody") is None
    assert len(billing.asked) == 1
    clock[0] = 6
    assert await cache.get("nobody") is None
    assert len(billing.asked) == 2


async def test_billing_unreachable_keeps_the_tokenizer_held_and_refuses_a_new_one(tokenizer: Tokenizer) -> None:
    clock = [0.0]
    billing = Billing()
    billing.models["m"] = (1, trained.files(tokenizer, trained.config()))
    cache = RegisteredTokenizers(billing.request, refresh_s=5, clock=lambda: clock[0])
    held = await cache.get("m")
    billing.down = True
    clock[0] = 10
    assert await cache.get("m") is held
    with pytest.raises(TimeoutError):
        await cache.get("other")


async def test_a_bundle_that_does_not_match_its_sha256_is_refused(tokenizer: Tokenizer) -> None:
    billing = Billing()
    billing.models["m"] = (1, trained.files(tokenizer, trained.config()))
    billing.corrupt = True
    with pytest.raises(TokenizerFetchError, match="SHA-256"):
        await RegisteredTokenizers(billing.request).get("m")


async def test_at_most_capacity_tokenizers_are_kept(tokenizer: Tokenizer) -> None:
    billing = Billing()
    for name in "abc":
        billing.models[name] = (1, trained.files(tokenizer, trained.config()))
    cache = RegisteredTokenizers(billing.request, capacity=2)
    for name in "abca":
        await cache.get(name)
    assert cache.fetches == 4  # a was dropped for c, and fetched again


def test_the_lru_drops_the_least_recently_used() -> None:
    lru: TokenizerLru = TokenizerLru(2)
    sentinel = object()
    lru.put("a", sentinel)  # type: ignore[arg-type]
    lru.put("b", sentinel)  # type: ignore[arg-type]
    assert lru.get("a") is sentinel
    lru.put("c", sentinel)  # type: ignore[arg-type]
    assert (lru.get("b"), len(lru)) == (None, 2)
    with pytest.raises(ValueError, match="at least one"):
        TokenizerLru(0)


async def test_an_unreachable_billing_holds_up_one_request_not_every_one() -> None:
    """A fetch that fails (billing away) raises once; for a few seconds after, the model counts as not
    registered at once (requests are held to the byte bounds meanwhile), then billing is asked again."""
    now = [0.0]
    asked: list[str] = []

    async def away(subject: str, data: bytes, timeout_s: float) -> bytes:
        asked.append(subject)
        raise TimeoutError

    cache = RegisteredTokenizers(away, clock=lambda: now[0])
    with pytest.raises(TimeoutError):
        await cache.get("m")
    assert await cache.get("m") is None
    assert len(asked) == 1
    now[0] += RETRY_AFTER_FAILURE_S + 0.1
    with pytest.raises(TimeoutError):
        await cache.get("m")
    assert len(asked) == 2
