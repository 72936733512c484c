"""Hoster context: what adapters announce about the hosters they front."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import Field

from libs.contracts.common import CHAT, MAX_COUNT, MAX_PRICE, Contract, DurationMs, Endpoint
from libs.contracts.verification import VerdictName

# The tag a hoster's NATS credentials carry: ``hoster:<hoster id>``.
HOSTER_TAG = "hoster:"

# How a model's weights are stored, in OpenRouter's names. ``unknown``: the hoster did not say (a request's
# ``provider.quantizations: ["unknown"]`` matches hosters that declared none).
Quantization = Literal["int4", "int8", "fp4", "fp6", "fp8", "fp16", "bf16", "fp32", "unknown"]

# What one heartbeat may hold: a hoster is untrusted input, and every router holds each of its heartbeats
# (and persists the names of its models), so each list and string is bounded as it is read.
# The longest name, region or model id; upstream model names may be file paths, so they get more.
MAX_NAME_LENGTH = 128
MAX_UPSTREAM_MODEL_LENGTH = 256
# Models per hoster: far more than one GPU box serves, few enough for a router to hold every hoster's.
MAX_MODELS_PER_HOSTER = 64
# Capabilities, endpoints and supported parameters of one offer (OpenAI's whole chat API has under 40
# parameters).
MAX_CAPABILITIES = 16
MAX_SUPPORTED_PARAMETERS = 128
# Hosters per heartbeat: adapters send one per hoster, on that hoster's own subject, and routers drop any
# heartbeat naming another; the registry itself takes a few at once.
MAX_HOSTERS_PER_HEARTBEAT = 16
# A heartbeat interval a router believes: adapters beat every second by default.
MAX_HEARTBEAT_INTERVAL_S = 60.0

# A model id as the network names it: what Hugging Face, Ollama and OpenRouter ids use (``org/name``,
# ``name:tag``, ``name@rev``), no spaces or control characters.
ModelId = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
# A capability or parameter name.
Token = Annotated[str, Field(min_length=1, max_length=64)]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def hoster_uuid(ref: str) -> str | None:
    """The hoster id ``ref`` names when it is shaped like a UUID (in any form ``uuid.UUID`` reads), else
    ``None``. Such a ref only ever names a hoster's id, so registration refuses it as a name."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return None


def name_key(name: str) -> str:
    """What two hoster names must share to be the same name: equal but for the case of ASCII letters. Only
    ASCII is folded because PostgreSQL's ``lower()`` (the unique index on live hosters' names) folds those
    too, whatever else its locale folds: two names the router would take for one are never both registered."""
    return name.translate(_ASCII_LOWER)


class ModelOffer(Contract):
    """One model a hoster serves, under the network's name, with its price.

    Prices are integers: micro-credits per million tokens (1 credit = 1,000,000 micro-credits).
    """

    model: ModelId
    upstream_model: str = Field(min_length=1, max_length=MAX_UPSTREAM_MODEL_LENGTH)
    input_price: int = Field(ge=0, le=MAX_PRICE)
    output_price: int = Field(ge=0, le=MAX_PRICE)
    context_length: int | None = None
    # What the model can take beyond plain text: "tools", "json" (response_format), "vision" (image parts).
    capabilities: list[Token] = Field(default_factory=list, max_length=MAX_CAPABILITIES)
    # The OpenAI endpoints it serves (a chat model usually also serves text completions; an embedding model
    # only embeddings).
    endpoints: list[Endpoint] = Field(default_factory=lambda: [CHAT], max_length=3)
    # The quantization of the weights it serves, as the hoster declares it (``None``: not declared).
    quantization: Quantization | None = None


class HosterStatus(Contract):
    """The live state of one hoster as its adapter sees it."""

    hoster_id: str = Field(max_length=64)
    name: Name
    cloud: bool
    region: Name | None = None
    capacity: int = Field(ge=0, le=MAX_COUNT)
    in_flight: int = Field(ge=0, le=MAX_COUNT)
    models: list[ModelOffer] = Field(max_length=MAX_MODELS_PER_HOSTER)
    # The time to first token the hoster promises; trust drops when the observed p95 is worse.
    advertised_ttft_ms: DurationMs | None = None
    # Request parameters it takes beyond model, messages and stream; ``None``: every parameter.
    supported_parameters: list[Token] | None = Field(None, max_length=MAX_SUPPORTED_PARAMETERS)


class HosterHeartbeat(Contract):
    """Sent by every adapter every ``interval_s``; a hoster missing for a few beats is gone."""

    adapter_id: str = Field(max_length=MAX_NAME_LENGTH)
    interval_s: float = Field(gt=0, le=MAX_HEARTBEAT_INTERVAL_S)
    hosters: list[HosterStatus] = Field(max_length=MAX_HOSTERS_PER_HEARTBEAT)


class LiveModel(Contract):
    """A model live on the network now, summarised over its hosters."""

    id: str
    hosters: int
    min_input_price: int
    max_input_price: int
    min_output_price: int
    max_output_price: int
    context_length: int | None
    first_seen: int
    # Every endpoint at least one of its live hosters serves it on.
    endpoints: list[Endpoint] = Field(default_factory=lambda: [CHAT])
    # Registered with its tokenizer: the network counts its tokens (else its usage is held to byte bounds).
    usage_verified: bool = False
    # Its live hosters whose spot checks verified that they serve it (references included), and whether
    # the operator designated a reference for it.
    verified_hosters: int = 0
    has_reference: bool = False


class ModelsListing(Contract):
    """Reply to ``router.models.list``."""

    models: list[LiveModel]


class RegisteredHoster(Contract):
    """A hoster as it registered: routing believes these facts, not the hoster's own heartbeat."""

    hoster_id: str
    name: str
    region: str | None = None
    cloud: bool = False
    revoked: bool = False


class HosterRegistrations(Contract):
    """billing -> router: every registered hoster (reply to ``billing.hosters.list``)."""

    hosters: list[RegisteredHoster]


class LiveHoster(Contract):
    """router -> operator: one hoster as the router sees it now."""

    hoster_id: str
    name: str
    live: bool
    cloud: bool
    models: list[str]
    capacity: int | None = None
    in_flight: int | None = None
    trust: float
    cooling: bool
    attempts: int
    # Usage reports past the request's bounds, billed at the bound (as this router saw them).
    usage_discrepancies: int = 0
    # Attempts whose speed, from the network's count and clock, was past the model's plausibility bound:
    # their timing is not used to rank the hoster (as this router saw them).
    implausible_speeds: int = 0
    region: str | None = None
    # Over its models: the median of recent times to first token (the lowest model's; ``None`` before 5
    # samples) and the best tokens per second (moving average), for the public network page.
    ttft_median_ms: float | None = None
    tokens_per_s: float | None = None
    # The models whose speed it is not believed on now (one of its last 20 attempts there was implausibly
    # fast: routing ranks it as slow), so the figures above are not shown as measured.
    speed_suspicious_models: list[str] = Field(default_factory=list)
    # Its spot check verdict per model it serves (``verified``, ``failed``, ``unchecked``).
    verifications: dict[str, VerdictName] = Field(default_factory=dict)


class LiveHosters(Contract):
    """Reply to ``router.hosters.list``."""

    hosters: list[LiveHoster]
