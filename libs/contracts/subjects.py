"""Every NATS subject, queue group and JetStream name the system uses. No subject is written anywhere else.

Naming: ``<context>.<entity>.<verb or event>``; commands are imperative, events past tense.
"""

from __future__ import annotations

# ingress -> router (request/reply, queue group "router"): route one chat completion request.
ROUTE_REQUEST = "router.request.route"
# ingress -> router (request/reply): the models live on the network now.
LIST_MODELS = "router.models.list"
# operator (computeshare CLI) -> router (request/reply): every hoster the router knows, live or not.
LIST_HOSTERS = "router.hosters.list"

# Every subject a hoster touches carries its hoster id as a token, so nats-server permissions can confine
# each hoster's credentials to its own (see ``hoster_permissions``).
#
# router -> hoster_adapter (queue group "hoster_adapter"): start one attempt on one hoster. The message's
# NATS reply subject is the ingress's reply subject of the request: the hoster may publish there only
# because it received this message (a response permission).
_ATTEMPT_START = "adapter.attempt.start"
# hoster_adapter -> the router that dispatched (core): whether it took the attempt.
_ATTEMPT_ACCEPTED = "adapter.attempt.accepted"
# router -> hoster_adapter (core): the client went away, stop the attempt.
_ATTEMPT_CANCEL = "adapter.attempt.cancel"
# hoster_adapter -> routers (broadcast): one hoster is alive, with its models and prices.
_HOSTER_HEARTBEAT = "adapter.hoster.heartbeated"
HOSTER_HEARTBEAT_ALL = _HOSTER_HEARTBEAT + ".*"
# hoster_adapter -> the router that dispatched (core, never stored): one attempt is over, as the hoster claims
# it; ``adapter.attempt.finished.<hoster>.<router>``. The router checks the claim against its own record of the
# dispatch; billing never reads a hoster's report (it settles from the router's records).
_ATTEMPT_FINISHED = "adapter.attempt.finished"
ATTEMPT_FINISHED_ALL = _ATTEMPT_FINISHED + ".>"
# router -> every router (broadcast, core): the outcomes of attempts it dispatched, as it judged them, in
# batches: the one source of every replica's stats and trust (no hoster may publish here).
ATTEMPTS_OBSERVED = "router.attempts.observed"
# router -> every router (broadcast, core): one spot check of a hoster, judged (``SpotCheckJudged``); each
# router folds it into its verdicts.
SPOT_CHECK_JUDGED = "router.spotchecks.judged"
# router -> JetStream (billing, durable): the request is over; settle its reservation.
REQUEST_FINISHED = "router.request.finished"
# ingress -> the router that owns a request: what reached the client (``router.request.delivered.<router>``).
_REQUEST_DELIVERED = "router.request.delivered"
# The JetStream stream holding the platform's usage events (settlements, lease events; nothing a hoster
# sends); billing reads each through its own durable consumer.
USAGE_STREAM = "USAGE"
# billing -> JetStream: a usage event billing could not handle by its last delivery (or could not read at all),
# kept with why, for an operator (``computeshare deadletter list|replay``): ``billing.deadletter.<consumer>``.
DEADLETTER_STREAM = "DEADLETTER"
_DEADLETTER = "billing.deadletter"
DEADLETTER_ALL = _DEADLETTER + ".>"

# ingress -> hoster_adapters and routers (broadcast): the client went away, stop generating.
REQUEST_CANCELLED = "ingress.request.cancelled"

# hoster_adapter / router -> ingress: the token stream of one request, one subject per request.
_REPLY = "ingress.reply"
# Every ingress's reply subjects (a platform-run adapter may publish there; a hoster only as responses).
REPLY_ALL = _REPLY + ".>"
_CONTROL = "ingress.control"

# ingress -> billing (request/reply): who holds this API key?
VERIFY_KEY = "billing.key.verify"
# router -> billing (request/reply): admit a request: rate limits, then reserve its maximum cost.
RESERVE_CREDITS = "billing.credits.reserve"
# router -> billing (request/reply): hold a credit lease for the router to admit an account's requests against.
LEASE_CREDITS = "billing.credits.lease"
# router -> JetStream (billing, durable): requests admitted against a lease; a lease given back.
_LEASE_EVENTS = "router.lease"
LEASE_ADMITTED = _LEASE_EVENTS + ".admitted"
LEASE_RETURNED = _LEASE_EVENTS + ".returned"
LEASE_EVENTS_ALL = _LEASE_EVENTS + ".*"
# billing -> the router holding a lease (request/reply): admit nothing more against it, say what it admitted.
_LEASE_RECALL = "router.lease.recall"
# router -> billing (queue group "billing", no reply): these requests are still running; keep their holds.
RESERVATIONS_ALIVE = "billing.credits.alive"
# ingress -> billing (request/reply): an account's credits and recent usage.
SHOW_CREDITS = "billing.credits.show"
LIST_USAGE = "billing.usage.list"
SHOW_GENERATION = "billing.generation.show"
# ingress -> billing (request/reply): the caller's key, its limits and its spend.
SHOW_KEY = "billing.key.show"
# router -> billing (request/reply): the registered hosters, whose registration routing believes.
LIST_REGISTRATIONS = "billing.hosters.list"
# any platform service -> billing (request/reply): a registered model's tokenizer, in parts
# (``libs/contracts/models.py``); the asker counts tokens locally with it.
FETCH_TOKENIZER = "billing.tokenizer.fetch"
# router -> billing (request/reply): the models registered with their tokenizers (whose usage is verified).
LIST_TOKENIZERS = "billing.tokenizers.list"
# ingress -> billing (request/reply): the Responses API's stored responses (``libs/contracts/stored_responses.py``):
# keep one, show it, delete it, its input items, the chain a ``previous_response_id`` replays.
STORE_RESPONSE = "billing.responses.store"
SHOW_RESPONSE = "billing.responses.show"
DELETE_RESPONSE = "billing.responses.delete"
LIST_RESPONSE_INPUT_ITEMS = "billing.responses.input_items"
RESPONSE_CHAIN = "billing.responses.chain"

# Management (``libs/contracts/management.py``): ingress's management API and the console -> billing
# (request/reply, queue group "billing"). Every query names the account or hoster it was authenticated for.
# Whose management key is this (``not_management`` for an inference key)?
VERIFY_MANAGEMENT_KEY = "billing.management.verify"
# An account's keys: list, one, create (an inference key, shown once), revoke, change limits or label.
LIST_ACCOUNT_KEYS = "billing.keys.list"
SHOW_ACCOUNT_KEY = "billing.keys.show"
CREATE_ACCOUNT_KEY = "billing.keys.create"
REVOKE_ACCOUNT_KEY = "billing.keys.revoke"
UPDATE_ACCOUNT_KEY = "billing.keys.update"
# An account's money now, its usage per UTC day, its recent requests, one request's routing record.
SHOW_ACCOUNT = "billing.account.show"
ACCOUNT_DAILY_USAGE = "billing.account.daily"
LIST_ACCOUNT_REQUESTS = "billing.account.requests"
SHOW_ACCOUNT_GENERATION = "billing.account.generation"
# Whose hoster console token (``ngh_...``) is this; a hoster's attempts and earnings per day; its attempts.
VERIFY_HOSTER_TOKEN = "billing.hoster.verify"
HOSTER_DAILY = "billing.hoster.daily"
LIST_HOSTER_ATTEMPTS = "billing.hoster.attempts"
# billing -> every ingress (broadcast): a key was revoked or its limits changed; drop it from the key cache.
KEY_CHANGED = "billing.key.changed"

# console -> router (request/reply): one hoster's live status, models, prices, speed and trust with its terms.
SHOW_HOSTER = "router.hoster.show"

# Queue groups are the service names.
QUEUE_ROUTER = "router"
QUEUE_HOSTER_ADAPTER = "hoster_adapter"
QUEUE_BILLING = "billing"
# JetStream binds a push consumer's durable name to its deliver group, so each durable has its own group.
BILLING_REQUESTS_DURABLE = "billing_requests"
BILLING_LEASES_DURABLE = "billing_leases"

# JetStream key-value bucket where routers remember every model ever served (survives restarts).
MODELS_SEEN_BUCKET = "router_models_seen"
# JetStream key-value bucket where routers keep every hoster's stats and trust (survives restarts).
HOSTER_STATS_BUCKET = "router_hoster_stats"
# Every hoster's spot check verdict per model, with its evidence (key ``hoster|model``, base64url).
VERDICTS_BUCKET = "router_verdicts"


# A hoster's own inbox prefix: replies to its requests (JetStream acks of its outcome reports) arrive under it,
# and it may subscribe to nothing else of the kind.
_HOSTER_INBOX = "_INBOX_hoster"
# Any client's default inbox prefix (services).
SERVICE_INBOX_ALL = "_INBOX.>"
# The web console's inbox prefix (its connection's ``inbox_prefix``): replies to its requests, and only those.
CONSOLE_INBOX = "_INBOX_console"


def attempt_start(hoster_id: str) -> str:
    """Subject on which the adapters fronting ``hoster_id`` take attempts."""
    return f"{_ATTEMPT_START}.{hoster_id}"


def attempt_accepted(hoster_id: str, router_id: str) -> str:
    """Subject of a hoster's answer to a dispatch, addressed to the router that sent it."""
    return f"{_ATTEMPT_ACCEPTED}.{hoster_id}.{router_id}"


def request_delivered(router_id: str) -> str:
    """Where the ingress tells router ``router_id`` what of its request reached the client."""
    return f"{_REQUEST_DELIVERED}.{router_id}"


def lease_recall(router_id: str) -> str:
    """Where billing recalls router ``router_id``'s credit leases."""
    return f"{_LEASE_RECALL}.{router_id}"


def attempts_finished_for_router(router_id: str) -> str:
    """Wildcard a router subscribes for the outcome reports of its own dispatches."""
    return f"{_ATTEMPT_FINISHED}.*.{router_id}"


def attempts_accepted_by_router(router_id: str) -> str:
    """Wildcard a router subscribes for the answers to its dispatches."""
    return f"{_ATTEMPT_ACCEPTED}.*.{router_id}"


def attempt_cancel(hoster_id: str) -> str:
    """Subject on which a hoster's adapters hear that a request they serve was cancelled."""
    return f"{_ATTEMPT_CANCEL}.{hoster_id}"


def hoster_heartbeat(hoster_id: str) -> str:
    """Subject of one hoster's heartbeats."""
    return f"{_HOSTER_HEARTBEAT}.{hoster_id}"


def attempt_finished(hoster_id: str, router_id: str) -> str:
    """Subject of an attempt's outcome: reported by ``hoster_id``, addressed to the router owning the request."""
    return f"{_ATTEMPT_FINISHED}.{hoster_id}.{router_id}"


def hoster_of(subject: str) -> str:
    """The hoster id token of a hoster subject (``adapter.<entity>.<verb>.<hoster>[.<router>]``): the only
    identity a receiver may believe, since the server lets each hoster publish under its own id alone."""
    return subject.split(".", 4)[3]


def hoster_inbox_prefix(hoster_id: str) -> str:
    """The inbox prefix a hoster's connection uses."""
    return f"{_HOSTER_INBOX}.{hoster_id}"


def hoster_permissions(hoster_id: str) -> tuple[list[str], list[str]]:
    """``(publish, subscribe)`` allowed to a hoster's credentials (``*`` as hoster id: a platform adapter that
    fronts many hosters). Replies to the ingress are not listed: they are response permissions."""
    publish = [
        attempt_accepted(hoster_id, "*"),
        hoster_heartbeat(hoster_id),
        attempt_finished(hoster_id, "*"),
    ]
    # Its own heartbeats too: the adapters of one hoster split its capacity among those they hear.
    subscribe = [
        attempt_start(hoster_id),
        attempt_cancel(hoster_id),
        hoster_heartbeat(hoster_id),
        f"{hoster_inbox_prefix(hoster_id)}.>",
    ]
    return publish, subscribe


def console_permissions() -> tuple[list[str], list[str]]:
    """``(publish, subscribe)`` allowed to the web console's credentials: the management requests to billing
    and the router, the public listings, and replies on its own inbox; nothing else (never admission,
    settlement, attempts or another service's inbox)."""
    publish = [
        VERIFY_MANAGEMENT_KEY,
        LIST_ACCOUNT_KEYS,
        SHOW_ACCOUNT_KEY,
        CREATE_ACCOUNT_KEY,
        REVOKE_ACCOUNT_KEY,
        UPDATE_ACCOUNT_KEY,
        SHOW_ACCOUNT,
        ACCOUNT_DAILY_USAGE,
        LIST_ACCOUNT_REQUESTS,
        SHOW_ACCOUNT_GENERATION,
        VERIFY_HOSTER_TOKEN,
        HOSTER_DAILY,
        LIST_HOSTER_ATTEMPTS,
        SHOW_HOSTER,
        LIST_HOSTERS,
        LIST_MODELS,
    ]
    return publish, [f"{CONSOLE_INBOX}.>"]


def control_inbox(ingress_id: str) -> str:
    """Wildcard of an ingress instance's control subjects: the router's failover notices and the errors that
    end a request. Hosters may publish only to the reply subjects of attempts they received, never here, so
    no hoster can speak for the router."""
    return f"{_CONTROL}.{ingress_id}.*"


def control_subject(reply_subject: str) -> str:
    """The control subject beside a request's reply subject (``ingress.control.<ingress>.<request>``)."""
    if not reply_subject.startswith(_REPLY + "."):
        raise ValueError(f"not a reply subject: {reply_subject!r}")
    return _CONTROL + reply_subject[len(_REPLY) :]


def reply_inbox(ingress_id: str) -> str:
    """Wildcard an ingress instance subscribes once, before it publishes any request."""
    return f"{_REPLY}.{ingress_id}.>"


def reply_subject(ingress_id: str, request_id: str) -> str:
    """A request's reply subject, ``ingress.reply.<ingress>.<request>``: the base of its offers' subjects
    (``offer_subject``); nobody publishes to it as it is."""
    return f"{_REPLY}.{ingress_id}.{request_id}"


def ingress_of(reply: str) -> str | None:
    """The ingress id of a request's reply subject (``ingress.reply.<ingress>.<request>``), or ``None``."""
    parts = reply.split(".")
    if len(parts) != 4 or f"{parts[0]}.{parts[1]}" != _REPLY or not parts[2]:
        return None
    return parts[2]


def offer_subject(reply: str, attempt: int, token: str) -> str:
    """The reply subject of one offer of a request (``<reply>.<attempt>.<token>``): the router makes one per
    offer, with an unguessable ``token``, and names it to the ingress when that offer serves; the hoster
    offered it may publish only there (its response permission), and the ingress reads only the subject of
    the attempt it is serving, so no other hoster's frames (one that declined, one that was abandoned) reach
    the client."""
    return f"{reply}.{attempt}.{token}"


def offer_of(reply: str, subject: str) -> str | None:
    """The offer part (``<attempt>.<token>``) of ``subject`` under request reply subject ``reply``."""
    if not subject.startswith(reply) or subject[len(reply) : len(reply) + 1] != ".":
        return None
    return subject[len(reply) + 1 :]


def deadletter(consumer: str) -> str:
    """Where billing's consumer ``consumer`` keeps the events it gave up on."""
    return f"{_DEADLETTER}.{consumer}"
