"""What a hoster's credentials carry for nats-server to enforce: its per-connection limits, and a response
permission as long and as large as the longest attempt the adapter lets run (never shorter, so the last frame
of a legitimate attempt is never refused)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pydantic
import pytest

from libs.contracts import frames
from libs.platform.natsauth import (
    HOSTER_MAX_PAYLOAD,
    HOSTER_MAX_SUBS,
    RESPONSE_MAX_MSGS,
    RESPONSE_TTL_S,
    AuthStore,
    creds_jwt,
    decode_jwt,
)
from services.hoster_adapter.settings import AdapterSettings


def test_a_hosters_credentials_carry_its_limits_and_its_response_bounds(tmp_path: Path) -> None:
    auth = AuthStore(tmp_path).init()
    _, creds = auth.mint_hoster(str(uuid.uuid4()), "box")
    claims = decode_jwt(creds_jwt(creds))["nats"]
    assert (claims["subs"], claims["payload"], claims["data"]) == (HOSTER_MAX_SUBS, HOSTER_MAX_PAYLOAD, -1)
    assert claims["resp"] == {"max": RESPONSE_MAX_MSGS, "ttl": RESPONSE_TTL_S * 1_000_000_000}
    # The platform's services are not limited.
    _, platform = auth.mint_user("router", None)
    assert decode_jwt(creds_jwt(platform))["nats"]["subs"] == -1


def test_the_response_permission_covers_the_longest_attempt_the_adapter_runs() -> None:
    settings = AdapterSettings()
    assert RESPONSE_TTL_S >= settings.max_attempt_duration_s == frames.MAX_ATTEMPT_DURATION_S
    assert RESPONSE_TTL_S <= frames.MAX_ATTEMPT_DURATION_S + 60
    # Every chunk frame costs the upstream at least MIN_CHUNK_LINE_BYTES; keepalives at most one per second.
    most_frames = settings.max_attempt_bytes // frames.MIN_CHUNK_LINE_BYTES + settings.max_attempt_duration_s + 2
    assert most_frames <= RESPONSE_MAX_MSGS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_attempt_duration_s", frames.MAX_ATTEMPT_DURATION_S + 1),
        ("max_attempt_bytes", frames.MAX_ATTEMPT_BYTES + 1),
        ("keepalive_interval_s", frames.MIN_KEEPALIVE_INTERVAL_S / 2),
    ],
)
def test_the_adapter_refuses_bounds_past_what_the_response_permission_allows(name: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=name):
        AdapterSettings.model_validate({name: value})
