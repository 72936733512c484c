"""Routing context: the lifecycle of one request between ingress, router and hoster adapter."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from libs.contracts.billing import Caller
from libs.contracts.common import CHAT, Api, Contract, Count, DurationMs, Endpoint, ErrorReport, Price, UnixTime, Usage

Tier = Literal["cheapest", "balanced", "fastest"]
# How the router orders the eligible hosters: a tier, or ``throughput`` (the highest observed tokens per second
# first), which only OpenRouter's ``provider.sort`` asks for.
RankBy = Literal["cheapest", "balanced", "fastest", "throughput"]


class RoutingPreferences(Contract):
    """The client's routing parameters, in either dialect (ours: API reference; OpenRouter's: ``provider``,
    ``models`` and the model suffixes, mapped by ``libs.contracts.openrouter``).

    Hosters are named by UUID (``allow_hosters``, ``deny_hosters``) or, in OpenRouter's fields, by UUID or
    registered name (``only_hosters``, ``ignore_hosters``, ``order_hosters``; the router's ``HosterRefs``
    matches them). Every filter given applies: a hoster must pass ours and OpenRouter's.
    """

    tier: RankBy = "balanced"
    privacy_mode: bool = False
    trusted_only: bool = False
    max_latency_ms: int | None = None
    fallback_models: list[str] = Field(default_factory=list)
    allow_hosters: list[str] = Field(default_factory=list)
    deny_hosters: list[str] = Field(default_factory=list)
    # OpenRouter's name: only hosters that support every parameter the request sets are eligible.
    require_parameters: bool = False
    # ``provider.only`` / ``provider.ignore``.
    only_hosters: list[str] = Field(default_factory=list)
    ignore_hosters: list[str] = Field(default_factory=list)
    # ``provider.order``: these hosters are tried first, in this order; with ``allow_fallbacks`` false, only
    # they (without an order, only the best-ranked hoster of each model).
    order_hosters: list[str] = Field(default_factory=list)
    allow_fallbacks: bool = True
    # ``provider.max_price``: the most the client pays per million tokens, the platform fee included
    # (micro-credits per million tokens); dearer hosters are not eligible.
    max_input_price: int | None = None
    max_output_price: int | None = None
    # ``provider.quantizations``: only hosters that declared one of these for the model.
    quantizations: list[str] = Field(default_factory=list)
    # The field the client named a restriction with when only OpenRouter's asked for it (``privacy_mode`` ->
    # ``provider.data_collection "deny"``): a request no hoster can serve is refused in the client's words.
    named_as: dict[str, str] = Field(default_factory=dict)

    def label(self, field: str) -> str:
        """How the client named ``field``."""
        return self.named_as.get(field, field)


class RouteRequest(Contract):
    """ingress -> router: route one chat completion. ``body`` is the client's body minus routing fields."""

    request_id: str
    reply_subject: str
    model: str
    stream: bool
    include_usage: bool
    created: int
    routing: RoutingPreferences
    body: dict[str, Any]
    caller: Caller | None = None
    endpoint: Endpoint = CHAT
    # The API the client called where it is not the endpoint the hosters serve (``responses``, served as
    # chat.completions): what the request's records name.
    api: Api | None = None

    @property
    def recorded_api(self) -> Api:
        return self.api or self.endpoint


class RouteAccepted(Contract):
    """router -> ingress: an adapter took the first attempt; chunks will arrive on the reply subject."""

    status: Literal["accepted"] = "accepted"
    hoster_id: str
    model: str
    attempt: int
    headers: dict[str, str] = Field(default_factory=dict)
    # The first attempt's first-byte deadline (the ingress enforces it too, with some grace).
    first_byte_deadline_ms: float | None = None
    # The request's usage bounds (``UsageBounds``) and the serving hoster's prices: the usage the client sees is
    # the hoster's report held to the bounds, priced as billing prices it.
    prompt_bound: int | None = None
    completion_bound: int | None = None
    input_price: int = 0
    output_price: int = 0
    fee_bps: int = 0
    # The router that owns the request: the ingress tells it what reached the client (``RequestDelivered``).
    router_id: str = ""
    # The serving offer's reply subject (``subjects.offer_subject``): the ingress reads frames from it alone.
    reply_subject: str = ""
    # The prompt's tokens as the network counted them with the model's registered tokenizer (``None``: the
    # model is not registered, its usage is not verified): the client sees no more than this.
    prompt_tokens: int | None = Field(None, ge=0)


class RouteRejected(Contract):
    """router -> ingress: the request cannot be served."""

    status: Literal["rejected"] = "rejected"
    error: ErrorReport
    headers: dict[str, str] = Field(default_factory=dict)


RouteDecision = Annotated[RouteAccepted | RouteRejected, Field(discriminator="status")]


class AttemptDispatch(Contract):
    """router -> hoster_adapter: run attempt ``attempt`` of a request on one hoster. Every offer is a new
    attempt number with a reply subject of its own (``subjects.offer_subject``)."""

    request_id: str
    attempt: int
    router_id: str
    reply_subject: str
    hoster_id: str
    model: str
    upstream_model: str
    stream: bool
    include_usage: bool
    created: int
    input_price: Price
    output_price: Price
    fee_bps: int = 0
    body: dict[str, Any]
    # The completion limit per choice the request's reservation was priced on: the adapter sends it upstream
    # under the profile's own name, whatever the body said (max_tokens and max_completion_tokens may disagree,
    # or be absent).
    max_tokens: int = Field(ge=0)  # 0 for embeddings, which generate nothing
    # How long the adapter waits for the hoster's first chunk; None: the adapter's own ceiling, which also
    # caps any value given here.
    first_byte_deadline_ms: float | None = Field(None, gt=0)
    endpoint: Endpoint = CHAT


class AttemptAccepted(Contract):
    """hoster_adapter -> router: whether the adapter took the attempt (it refuses when at capacity)."""

    request_id: str
    attempt: int
    accepted: bool
    adapter_id: str
    reason: str | None = None


AttemptOutcome = Literal["succeeded", "failed", "cancelled"]


class AttemptFinished(Contract):
    """hoster_adapter -> the router that dispatched (core): one attempt is over, as the hoster claims it.

    A claim, never a record: the router believes its usage only up to what the client received, prices only
    from its own dispatch, and its outcome only as far as the ingress confirms it (``services.router.service``).
    ``chunks_sent`` counts chunks the hoster says it published to the client's reply subject.
    """

    request_id: str
    attempt: int
    router_id: str = ""
    hoster_id: str
    adapter_id: str
    model: str
    stream: bool
    outcome: AttemptOutcome
    usage: Usage
    chunks_sent: Count
    input_price: Price
    output_price: Price
    finish_reason: str | None = None
    error: str | None = None
    upstream_status: int | None = None
    # The upstream refused the client's own parameters (400, 413, 422): the client's fault, not the hoster's,
    # so it is neither retried elsewhere nor counted against the hoster.
    client_error: bool = False
    ttft_ms: DurationMs | None = None
    duration_ms: DurationMs
    finished_at: UnixTime
    # Parameters the client sent that this hoster does not take, dropped on the way.
    dropped_parameters: list[str] = Field(default_factory=list)


class RequestDelivered(Contract):
    """ingress -> the owning router, once, when the client's response ended (whatever ended it): what of
    attempt ``attempt`` reached the client: ``frames`` frames of content (0: nothing), the UTF-8 bytes of
    text in them (content, reasoning, refusal, tool call names and arguments) over ``choices`` choices, and
    the time from the attempt's start to its first content on the ingress's clock. The network's own record
    of what the client received: the router bills an attempt only on it, and no more completion tokens than
    that text can hold; no note (within the router's wait) is nothing delivered."""

    request_id: str
    attempt: int = Field(ge=1)
    text_bytes: int = Field(ge=0)
    choices: int = Field(ge=1)
    frames: int = Field(0, ge=0)
    ttft_ms: float | None = Field(None, ge=0, le=86_400_000)
    # The time from the attempt's start to its last content on the ingress's clock (a whole answer's: its
    # first), for the speed the network measures (``ttft_ms`` to this one is the generation).
    last_content_ms: float | None = Field(None, ge=0, le=86_400_000)
    # The completion tokens of that text (plus an end token per choice that ended) as the ingress counted
    # them with the model's registered tokenizer; ``None`` for a model not registered.
    completion_tokens: int | None = Field(None, ge=0)


class AttemptObserved(Contract):
    """One attempt as the router that dispatched it judged it, for every replica's stats and trust."""

    hoster_id: str
    model: str
    outcome: AttemptOutcome
    chunks_sent: int = Field(ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    completion_tokens: int = Field(ge=0)
    duration_ms: float = Field(ge=0)
    client_error: bool = False
    discrepancy: bool = False
    # The speed the router measured (its count of the tokens, the ingress's clock), at most the model's
    # plausibility bound; ``implausible_speed``: past that bound, so none of the attempt's timing is used.
    tokens_per_s: float | None = Field(None, ge=0, le=1e9)
    implausible_speed: bool = False


class AttemptsObserved(Contract):
    """router -> every router (``ATTEMPTS_OBSERVED``): outcomes of attempts ``router_id`` dispatched."""

    router_id: str
    observations: list[AttemptObserved]


# Why the ingress gives up on an attempt: the client left, or the hoster missed a deadline the ingress
# enforces itself (a hoster's agent is not trusted to keep the deadlines it was given).
# ``route_timeout``: the ingress stopped waiting for the routing decision and answered the client with an
# error; whatever the request started is stopped and nothing of it is charged. ``empty_answer``: the hoster
# ended its answer without any content for the client (a usage claim at most), failed as a missed first byte.
CancelReason = Literal["client_gone", "first_byte_timeout", "stalled", "route_timeout", "empty_answer"]


class RequestCancelled(Contract):
    """ingress -> routers (router -> the serving hoster): stop the request. The client disconnected (bill what
    was made), or the serving attempt missed its first-byte deadline, stalled or ended with no content at the
    ingress (the router fails it as the hoster's failure and fails over when it may), or the ingress gave up
    waiting for the route (nothing is charged)."""

    request_id: str
    reason: CancelReason = "client_gone"
    # The attempt that missed its deadline (``None`` for a client that left).
    attempt: int | None = None
