"""Shapes every bounded context uses: token usage and errors meant for the client."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Contract(BaseModel):
    """The base of every model in ``libs.contracts``: no float in any message is NaN or infinite. pydantic
    reads ``NaN`` and ``Infinity`` from JSON by default; a hoster's ``NaN`` time to first token would reach
    the router's stats, be stored as null and break its trust after a restart."""

    model_config = ConfigDict(allow_inf_nan=False)


# The longest duration a message may report (a time to first token, an attempt's): a day, far past any
# attempt (the adapter ends one at 30 minutes), so only a lie or a broken clock is refused.
MAX_DURATION_MS = 24 * 3600 * 1000.0
DurationMs = Annotated[float, Field(ge=0, le=MAX_DURATION_MS)]
# A wall-clock time (unix seconds) a message may carry: not before 1970, not after 2100.
UnixTime = Annotated[float, Field(ge=0, le=4_102_444_800)]

# The largest token count and price any message may carry: what a hoster reports is held to them as it is
# read, so no count or cost overflows PostgreSQL's integers (a count fits ``integer``, a cost ``bigint``).
MAX_COUNT = 2**31 - 1
# Micro-credits per million tokens: about a million credits per million tokens.
MAX_PRICE = 2**40


def _held(low: int, high: int) -> Callable[[Any], Any]:
    def hold(value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e30 is a whole number too
        return max(low, min(value, high)) if isinstance(value, int) and not isinstance(value, bool) else value

    return hold


# A token count as reported (negative kept, for the bounds to see, but within PostgreSQL's integer).
Count = Annotated[int, BeforeValidator(_held(-MAX_COUNT, MAX_COUNT))]
# A price as reported, held to [0, MAX_PRICE].
Price = Annotated[int, BeforeValidator(_held(0, MAX_PRICE))]


# The OpenAI endpoints a request can come through, as named in ``ModelOffer.endpoints`` and on ``/v1/models``.
Endpoint = Literal["chat.completions", "completions", "embeddings"]
CHAT: Endpoint = "chat.completions"
COMPLETIONS: Endpoint = "completions"
EMBEDDINGS: Endpoint = "embeddings"
# The API a client called, as a request's records name it: an endpoint, or the Responses API (served by the
# hosters as chat.completions).
Api = Literal["chat.completions", "completions", "embeddings", "responses"]
RESPONSES: Api = "responses"


def endpoint_path(endpoint: Endpoint) -> str:
    """The API path of an endpoint: ``chat.completions`` is ``/v1/chat/completions``."""
    return "/v1/" + endpoint.replace(".", "/")


class ErrorReport(Contract):
    """An error meant for the client: the OpenAI error envelope's fields plus the HTTP status."""

    http_status: int
    type: str
    code: str | None
    message: str
    param: str | None = None
    retry_after: int | None = None


class ParamError(ValueError):
    """A request check that names the parameter at fault (``messages[1].content``, ``provider.zdr``), and an
    error code when the check has one of its own."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class Usage(Contract):
    """Token counts of an attempt; ``estimated`` when the upstream reported none and we counted."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    total_tokens: Count = 0
    estimated: bool = False
