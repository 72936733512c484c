"""Every error the gateway reports to a client, in one catalogue: its HTTP status, OpenAI type, code and
wording. Services raise or send these; none builds an ``ErrorReport`` of its own."""

from __future__ import annotations

import math

from libs.contracts.common import ErrorReport


def _server(status: int, code: str, message: str, retry_after: int | None = None) -> ErrorReport:
    return ErrorReport(http_status=status, type="server_error", code=code, message=message, retry_after=retry_after)


def _invalid(status: int, code: str | None, message: str, param: str | None = None) -> ErrorReport:
    return ErrorReport(http_status=status, type="invalid_request_error", code=code, message=message, param=param)


# The client's request --------------------------------------------------------------------------------------


def unauthorized(message: str, code: str | None = "invalid_api_key") -> ErrorReport:
    """401: no key, a malformed, unknown or revoked one."""
    return _invalid(401, code, message)


def request_too_large(limit: int) -> ErrorReport:
    """413: a body over the ingress's limit."""
    return _invalid(413, "request_too_large", f"The request body is larger than {limit} bytes.")


def unsupported_media_type() -> ErrorReport:
    """415: a body that is not sent as JSON."""
    return _invalid(
        415, "unsupported_media_type", "The request body must be JSON, sent with 'Content-Type: application/json'."
    )


def response_not_found(response_id: str, param: str) -> ErrorReport:
    """404: no stored response of that id for this account (another account's, deleted, expired, or never
    stored: ``store: false``)."""
    return _invalid(404, "response_not_found", f"Response with id '{response_id}' not found.", param)


def generation_not_found(request_id: str) -> ErrorReport:
    """404: no routing record of that id for this key (for a management key: for its account)."""
    return _invalid(
        404,
        "generation_not_found",
        f"No generation {request_id} was made with this API key, or by its account for a management key (or it "
        "is not recorded yet).",
        "id",
    )


def management_key_not_allowed() -> ErrorReport:
    """403: a management key on a model endpoint (chat, text completions, embeddings)."""
    return _invalid(
        403,
        "management_key_not_allowed",
        "A management key cannot call models; use one of the account's inference keys (ngk_...).",
    )


def not_a_management_key() -> ErrorReport:
    """403: an inference key on the management API."""
    return _invalid(
        403,
        "not_a_management_key",
        "Only a management key can manage keys and read the whole account; this is an inference key.",
    )


def key_not_found(key_id: str) -> ErrorReport:
    """404: no key of that id in the management key's account (whether another account has one is not said)."""
    return _invalid(404, "key_not_found", f"No key {key_id} in this account.", "key_id")


def model_not_live(model: str) -> ErrorReport:
    """404 from ``GET /v1/models/{id}``."""
    return _invalid(404, "model_not_found", f"The model `{model}` does not exist or no hoster serves it now.", "model")


def model_not_found(model: str) -> ErrorReport:
    """404: no model of that name was ever served on the network."""
    return _invalid(404, "model_not_found", f"The model `{model}` does not exist on this network.", "model")


def model_not_supported(model: str, path: str) -> ErrorReport:
    """404: the model is served, but on other endpoints than ``path`` (as OpenAI answers a chat model on
    ``/v1/completions``)."""
    return _invalid(
        404,
        "model_not_supported",
        f"The model `{model}` is not served on {path} by any hoster; see GET /v1/models for the endpoints each "
        "model serves.",
        "model",
    )


def rejected_by_hoster(status: int | None, detail: str | None) -> ErrorReport:
    """The hoster refused the client's own parameters (400, 413, 422): its status, no failover."""
    return _invalid(status or 400, "rejected_by_hoster", f"The hoster rejected the request's parameters ({detail}).")


# Money and rate limits ---------------------------------------------------------------------------------------


def insufficient_credits(amount: int, balance: int) -> ErrorReport:
    """402: the request's maximum cost is more than the balance (micro-credits)."""
    return ErrorReport(
        http_status=402,
        type="insufficient_quota",
        code="insufficient_credits",
        message=f"Insufficient credits: this request may cost up to {amount / 1e6:.6f} credits and the balance "
        f"is {balance / 1e6:.6f}. Top up, or lower max_tokens.",
    )


def daily_cap_reached(spent: int, cap: int) -> ErrorReport:
    """402: the account's daily spend cap would be passed (micro-credits)."""
    return ErrorReport(
        http_status=402,
        type="insufficient_quota",
        code="daily_cap_reached",
        message=f"Daily spend cap reached: {spent / 1e6:.6f} of {cap / 1e6:.6f} credits spent or held today (UTC).",
    )


def rate_limited(message: str, reset_s: float) -> ErrorReport:
    """429 with ``Retry-After``: the key's requests or tokens per minute."""
    return ErrorReport(
        http_status=429,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        message=message,
        retry_after=max(1, math.ceil(reset_s)),
    )


def too_many_invalid_keys(wait_s: float) -> ErrorReport:
    """429: the client's address spent its budget of wrong keys."""
    return ErrorReport(
        http_status=429,
        type="rate_limit_error",
        code="too_many_invalid_keys",
        message="Too many requests with invalid API keys from your address; retry later.",
        retry_after=max(1, math.ceil(wait_s)),
    )


# The network -------------------------------------------------------------------------------------------------


def no_hoster_available(reasons: list[str], retry_after: int) -> ErrorReport:
    """503: every hoster of the models asked for is excluded; ``reasons`` say by what."""
    return _server(
        503,
        "no_hoster_available",
        "No hoster can serve this request right now: " + "; ".join(reasons or ["no live hoster"]),
        retry_after,
    )


def hosters_busy(retry_after: int) -> ErrorReport:
    """503: no eligible hoster's adapter took the attempt."""
    return _server(503, "no_hoster_available", "Every eligible hoster is busy or unreachable right now.", retry_after)


def billing_unavailable(retry_after: int) -> ErrorReport:
    """503: billing did not answer the admission."""
    return _server(
        503, "billing_unavailable", "Billing is unavailable, so no request can be admitted right now.", retry_after
    )


def service_unavailable(message: str, retry_after: int) -> ErrorReport:
    """503: a service behind the ingress did not answer."""
    return _server(503, "service_unavailable", message, retry_after)


def hoster_went_away(retry_after: int) -> ErrorReport:
    """503: the adapter serving the request stopped heartbeating."""
    return _server(503, "hoster_unavailable", "The hoster serving this request went away.", retry_after)


def hoster_stopped_responding(retry_after: int) -> ErrorReport:
    """503: nothing alive came from the request's hoster for the ingress's idle timeout."""
    return _server(503, "hoster_unavailable", "The hoster serving this request stopped responding.", retry_after)


def all_hosters_failed() -> ErrorReport:
    """500: every attempt failed."""
    return _server(500, "all_hosters_failed", "All hosters failed to serve this request. Please retry.")


def upstream_broke_off() -> ErrorReport:
    """500: the hoster failed after part of the answer reached the client."""
    return _server(500, "upstream_error", "The hoster failed in the middle of the response.")


def route_timeout(retry_after: int) -> ErrorReport:
    """503: the ingress stopped waiting for the request's route."""
    return _server(503, "route_timeout", "The gateway stopped waiting for this request's route.", retry_after)


def client_too_slow() -> ErrorReport:
    """502: the client read more slowly than the answer came, past the ingress's buffer."""
    return _server(
        502,
        "client_too_slow",
        "The answer came faster than it was read and was stopped; read the stream as it arrives.",
    )


def incomplete_response(seq: int, attempt: int) -> ErrorReport:
    """502: frame ``seq`` of ``attempt`` never arrived; the answer ends before it."""
    return _server(
        502,
        "incomplete_response",
        f"Part of the answer was lost on its way (frame {seq} of attempt {attempt} never arrived); what came "
        "before it is all there is. Retry the request.",
    )


def malformed_answer() -> ErrorReport:
    """502: the serving hoster sent something other than the JSON objects of an answer."""
    return _server(
        502, "invalid_hoster_response", "The hoster's answer was malformed; what came before it is all there is."
    )
