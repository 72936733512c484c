"""The router remembers every model ever served, for ever (a model gone for now is a 503, not a 404), and the
names come from hosters' heartbeats: how many it remembers is bounded per hoster and in all."""

from __future__ import annotations

import pytest

from libs.contracts.hosters import MAX_MODELS_PER_HOSTER, HosterHeartbeat, HosterStatus, ModelOffer
from libs.contracts.routing import RoutingPreferences
from services.router import service
from services.router.service import MODELS_INTRODUCED_PER_HOSTER, HosterRegistry, NoEligibleHoster
from tests.unit.router.test_registry import H1, H2, order


def beat(registry: HosterRegistry, hoster_id: str, models: list[str], at: float = 100.0) -> list[str]:
    offers = [ModelOffer(model=m, upstream_model=m, input_price=1, output_price=1) for m in models]
    status = HosterStatus(hoster_id=hoster_id, name="n", cloud=False, capacity=1, in_flight=0, models=offers)
    return registry.observe(HosterHeartbeat(adapter_id=f"a-{hoster_id}", interval_s=1, hosters=[status]), at, 1)


def test_a_hoster_renaming_its_models_for_ever_introduces_a_bounded_number() -> None:
    registry = HosterRegistry(ttl_s=3.0)
    remembered: list[str] = []
    for batch in range(2 * MODELS_INTRODUCED_PER_HOSTER // MAX_MODELS_PER_HOSTER):
        names = [f"junk-{batch}-{i}" for i in range(MAX_MODELS_PER_HOSTER)]
        remembered += beat(registry, H1, names)
    assert len(remembered) == MODELS_INTRODUCED_PER_HOSTER
    assert set(registry.models_seen) == set(remembered)
    # Said once, however many more names it announces.
    assert registry.take_unremembered() == [(H1, f"junk-{MODELS_INTRODUCED_PER_HOSTER // MAX_MODELS_PER_HOSTER}-0")]
    beat(registry, H1, ["yet-another"])
    assert registry.take_unremembered() == []
    # Another hoster's new model is remembered, and one not remembered is still routed while it is live.
    assert beat(registry, H2, ["real-model"]) == ["real-model"]
    assert [c.hoster.hoster_id for c in order(registry, "yet-another", RoutingPreferences())] == [H1]


def test_the_network_remembers_a_bounded_number_of_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_MODELS_SEEN", 3)
    registry = HosterRegistry(ttl_s=3.0)
    assert beat(registry, H1, ["a", "b"]) == ["a", "b"]
    assert beat(registry, H2, ["c", "d"]) == ["c"]
    assert registry.take_unremembered() == [(H2, "d")]
    # "d" was never remembered: once no hoster serves it, it is unknown (404); "c" is only gone for now (503).
    registry.forget_expired(200.0)
    statuses = {}
    for model in ("c", "d"):
        with pytest.raises(NoEligibleHoster) as refused:
            order(registry, model, RoutingPreferences(), now=200.0)
        statuses[model] = refused.value.report.http_status
    assert statuses == {"c": 503, "d": 404}


def test_models_stored_without_their_introducer_count_only_against_the_network() -> None:
    registry = HosterRegistry(ttl_s=3.0)
    for i in range(MODELS_INTRODUCED_PER_HOSTER + 1):
        assert registry.remember(f"old-{i}", 1, "")
    assert beat(registry, H1, ["new"]) == ["new"]
