"""Every NATS subject, queue group and JetStream name the system uses. No subject is written anywhere else.

Naming: ``<context>.<entity>.<verb or event>``; commands are imperative, events past tense.
"""

from __future__ import annotations

# ingress -> router (request/reply, queue group "router"): route one chat completion request.
ROUTE_REQUEST = "router.request.route"
# ingress -> router (request/reply): the models live on the network now.
LIST_MODELS = "router.models.list"

# router -> hoster_adapter (request/reply, queue group "hoster_adapter"): start one attempt on one hoster.
_ATTEMPT_START = "adapter.attempt.start"
# hoster_adapter -> routers (broadcast): the hosters an adapter fronts are alive.
HOSTER_HEARTBEAT = "adapter.hoster.heartbeated"
# hoster_adapter -> JetStream (billing, durable) and the owning router (core): one attempt is over.
_ATTEMPT_FINISHED = "adapter.attempt.finished"
ATTEMPT_FINISHED_ALL = _ATTEMPT_FINISHED + ".>"
# router -> JetStream (billing, durable): the request is over; settle its reservation.
REQUEST_FINISHED = "router.request.finished"
# The JetStream stream holding both usage events; billing reads each through its own durable consumer.
USAGE_STREAM = "USAGE"

# ingress -> hoster_adapters and routers (broadcast): the client went away, stop generating.
REQUEST_CANCELLED = "ingress.request.cancelled"

# hoster_adapter / router -> ingress: the token stream of one request, one subject per request.
_REPLY = "ingress.reply"

# ingress -> billing (request/reply): who holds this API key?
VERIFY_KEY = "billing.key.verify"
# router -> billing (request/reply): admit a request: rate limits, then reserve its maximum cost.
RESERVE_CREDITS = "billing.credits.reserve"
# ingress -> billing (request/reply): an account's credits and recent usage.
SHOW_CREDITS = "billing.credits.show"
LIST_USAGE = "billing.usage.list"
SHOW_GENERATION = "billing.generation.show"

# Queue groups are the service names.
QUEUE_ROUTER = "router"
QUEUE_HOSTER_ADAPTER = "hoster_adapter"
QUEUE_BILLING = "billing"
# JetStream binds a push consumer's durable name to its deliver group, so each durable has its own group.
BILLING_ATTEMPTS_DURABLE = "billing_attempts"
BILLING_REQUESTS_DURABLE = "billing_requests"

# JetStream key-value bucket where routers remember every model ever served (survives restarts).
MODELS_SEEN_BUCKET = "router_models_seen"
# JetStream key-value bucket where routers keep every hoster's stats and trust (survives restarts).
HOSTER_STATS_BUCKET = "router_hoster_stats"


def attempt_start(hoster_id: str) -> str:
    """Subject on which the adapters fronting ``hoster_id`` take attempts."""
    return f"{_ATTEMPT_START}.{hoster_id}"


def attempt_finished(router_id: str) -> str:
    """Subject of the attempt outcome, addressed to the router instance that owns the request."""
    return f"{_ATTEMPT_FINISHED}.{router_id}"


def reply_inbox(ingress_id: str) -> str:
    """Wildcard an ingress instance subscribes once, before it publishes any request."""
    return f"{_REPLY}.{ingress_id}.*"


def reply_subject(ingress_id: str, request_id: str) -> str:
    """The per-request reply subject where chunks of ``request_id`` arrive."""
    return f"{_REPLY}.{ingress_id}.{request_id}"
