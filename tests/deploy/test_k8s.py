"""The Kubernetes manifests: every document is valid for the Kubernetes versions we target (strictly: an unknown
or misplaced field fails), the dev overlay builds (see ``kustomize.py``) and is valid too, and the built
manifests keep what operations rely on: probes, resources, drain times, autoscaling, disruption budgets,
non-root containers, a 3-node JetStream cluster, and references that resolve."""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import orjson
import pytest
import yaml
from pydantic import TypeAdapter

from libs.devstack.infra import nats_server_binary
from libs.platform.settings import TrustedProxies
from services.hoster_adapter.settings import HosterConfig
from tests.deploy.kustomize import KUSTOMIZATION, KustomizeError, Manifest, build, load_kustomization, patch_paths
from tests.deploy.settings_names import unknown_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BUILDS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev"}
# The oldest Kubernetes we support and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")

KUSTOMIZATION_DIRS = sorted(path.parent for path in K8S.rglob(KUSTOMIZATION))
PATCH_FILES = sorted(path for directory in KUSTOMIZATION_DIRS for path in patch_paths(directory))
MANIFEST_FILES = sorted(
    path for path in K8S.rglob("*.yaml") if path.name != KUSTOMIZATION and path not in set(PATCH_FILES)
)

# Secrets the base references but does not contain: production provides them (k8s/README.md says how).
EXTERNAL_SECRETS = {
    "computeshare-billing": {"database-url"},
    "computeshare-hosters": {"hosters.json"},
    "computeshare-nats-server": {"auth.conf"},
    "computeshare-nats-creds": {
        "ingress.creds",
        "router.creds",
        "billing.creds",
        "hoster_adapter.creds",
        "console.creds",
    },
    "computeshare-console": {"session-secret"},
}
# The adapter's longest silence from an upstream (CS_ADAPTER_READ_TIMEOUT_S' default) and the drain floor.
UPSTREAM_READ_TIMEOUT_S = 120
MIN_TERMINATION_GRACE_S = 150


class ServiceShape(NamedTuple):
    """What a service's Deployment must expose: its settings module and the port of its probes."""

    module: str
    port: int


SERVICES = {
    "ingress": ServiceShape("ingress", 8080),
    "router": ServiceShape("router", 9090),
    "billing": ServiceShape("billing", 9090),
    "hoster-adapter": ServiceShape("hoster_adapter", 9090),
    "console": ServiceShape("console", 8090),
}
# What a page of the console waits for is a few NATS requests, not a generation: it drains in seconds.
CONSOLE_TERMINATION_GRACE_S = 30


@functools.cache
def built(name: str) -> list[Manifest]:
    """The documents ``kustomize build`` makes of ``BUILDS[name]`` (the tests only read them)."""
    return build(BUILDS[name])


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    """The one ``kind`` named ``name``."""
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    """Every document of ``kind``."""
    return [doc for doc in docs if doc["kind"] == kind]


def workloads(docs: list[Manifest]) -> list[Manifest]:
    """Deployments and StatefulSets: everything that runs pods."""
    return [doc for doc in docs if doc["kind"] in {"Deployment", "StatefulSet"}]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    """The pod template's spec."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Manifest) -> dict[str, Any]:
    """The workload's single container (each of ours runs one)."""
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A container port given by number or by name, as a number; fails if the container has no such port."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port}")


def environment(container: dict[str, Any], docs: list[Manifest]) -> dict[str, str]:
    """The container's environment: its ConfigMaps' keys, then its own ``env`` (values from elsewhere as "")."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "")
    return env


def secret_value(docs: list[Manifest], name: str, key: str) -> str:
    """A key of a built Secret, decoded."""
    return base64.b64decode(find(docs, "Secret", name)["data"][key]).decode()


def prestop_sleep_s(container: dict[str, Any]) -> int:
    """How long the container's preStop hook sleeps."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``250m``, ``1``, ``512Mi``, ``1Gi``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match is not None, f"not a quantity: {value}"
    assert match.group(2) in {"", *units}, f"unknown unit: {value}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def label_selected(selector: dict[str, str], workload: Manifest) -> bool:
    """Whether ``selector`` selects the workload's pods."""
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


# Every file, as written.


@pytest.mark.parametrize("directory", KUSTOMIZATION_DIRS, ids=lambda path: str(path.relative_to(K8S)))
def test_kustomization_references_exist(directory: Path) -> None:
    """Every resource, patch and secret file a kustomization names exists, and patches say what they patch."""
    spec = load_kustomization(directory)
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert spec["kind"] == "Kustomization"
    assert spec["resources"], "a kustomization without resources"
    for entry in spec["resources"]:
        path = directory / entry
        assert path.is_file() or (path / KUSTOMIZATION).is_file(), f"{entry} does not exist"
    for patch in spec.get("patches", []):
        assert (directory / patch["path"]).is_file(), f"{patch['path']} does not exist"
        assert patch["target"].get("kind"), f"{patch['path']} patches no kind"
    for generator in spec.get("secretGenerator", []):
        for file in generator.get("files", []):
            assert (directory / file.rpartition("=")[2]).is_file(), f"{file} does not exist"


def test_every_manifest_is_deployed_by_a_kustomization() -> None:
    """A YAML file no kustomization names would never be applied."""
    named: set[Path] = set(PATCH_FILES)
    for directory in KUSTOMIZATION_DIRS:
        named |= {(directory / entry).resolve() for entry in load_kustomization(directory)["resources"]}
    assert [path for path in MANIFEST_FILES if path.resolve() not in named] == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda path: str(path.relative_to(K8S)))
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    """Every document of every manifest file, strictly against the API's schema."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no document"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validation above catches a misspelt field (it would otherwise be dropped silently by the API)."""
    deployment = copy.deepcopy(find(built("base"), "Deployment", "ingress"))
    only_container(deployment)["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# What gets applied: the builds.


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", BUILDS)
def test_build_is_valid_kubernetes(name: str, version: str) -> None:
    """The built base and overlay (patches applied, Secrets generated) are valid too."""
    for doc in built(name):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_has_deployment_service_autoscaler_and_budget(name: str, service: str) -> None:
    """Each service scales on CPU between bounds, keeps a replica through voluntary disruptions and has a
    Service whose ports reach its container."""
    docs = built(name)
    deployment = find(docs, "Deployment", service)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert label_selected(deployment["spec"]["selector"]["matchLabels"], deployment)
    container = only_container(deployment)

    service_spec = find(docs, "Service", service)["spec"]
    assert label_selected(service_spec["selector"], deployment)
    for port in service_spec["ports"]:
        port_number(container, port["targetPort"])

    autoscaler = find(docs, "HorizontalPodAutoscaler", service)
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    } in autoscaler["spec"]["metrics"]

    budget = find(docs, "PodDisruptionBudget", service)
    assert budget["apiVersion"] == "policy/v1"
    assert label_selected(budget["spec"]["selector"]["matchLabels"], deployment)
    assert budget["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_is_probed_where_it_listens(name: str, service: str) -> None:
    """Readiness on /readyz and liveness on /healthz, on the port the service is configured to serve them."""
    docs = built(name)
    container = only_container(find(docs, "Deployment", service))
    port = SERVICES[service].port
    env = environment(container, docs)
    if service == "ingress":
        assert (env["CS_INGRESS_HOST"], env["CS_INGRESS_PORT"]) == ("0.0.0.0", str(port))
    elif service == "console":
        assert (env["CS_CONSOLE_HOST"], env["CS_CONSOLE_PORT"]) == ("0.0.0.0", str(port))
    else:
        assert env["CS_METRICS_PORT"] == str(port)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        http_get = container[probe]["httpGet"]
        assert (http_get["path"], port_number(container, http_get["port"])) == (path, port), probe


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_drains_before_it_is_killed(name: str, service: str) -> None:
    """SIGKILL comes only after the preStop sleep and the longest drain: a generation in flight finishes."""
    docs = built(name)
    deployment = find(docs, "Deployment", service)
    container = only_container(deployment)
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= (CONSOLE_TERMINATION_GRACE_S if service == "console" else MIN_TERMINATION_GRACE_S)
    prestop = prestop_sleep_s(container)
    assert 5 <= prestop <= 15
    env = environment(container, docs)
    drain_setting = {"ingress": "CS_INGRESS_SHUTDOWN_GRACE_S", "hoster-adapter": "CS_ADAPTER_SHUTDOWN_GRACE_S"}
    if service in drain_setting:
        drain = float(env[drain_setting[service]])
        # The drain outlasts an upstream's longest silence, and SIGKILL leaves room to close connections.
        assert drain >= UPSTREAM_READ_TIMEOUT_S
        assert prestop + drain + 10 <= grace
    if service == "hoster-adapter":
        assert float(env["CS_ADAPTER_READ_TIMEOUT_S"]) <= float(env["CS_ADAPTER_SHUTDOWN_GRACE_S"])


@pytest.mark.parametrize("name", BUILDS)
def test_every_container_has_requests_and_limits(name: str) -> None:
    """CPU and memory requests (scheduling, the autoscaler's utilization) and limits no lower than them."""
    for workload in workloads(built(name)):
        for container in pod_spec(workload)["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), (container["name"], resource)


@pytest.mark.parametrize("name", BUILDS)
def test_no_container_runs_as_root(name: str) -> None:
    """Every pod meets the "restricted" Pod Security Standard, with a read-only root filesystem on top."""
    for workload in workloads(built(name)):
        spec = pod_spec(workload)
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context.get("runAsUser", pod_context.get("runAsUser", 0)) > 0, container["name"]
            assert context.get("runAsNonRoot", True) is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert not context.get("privileged", False)
            image_tag = container["image"].rpartition(":")[2]
            assert "/" not in image_tag, f"{container['image']} has no tag"
            assert image_tag not in {"", "latest"}, container["image"]


@pytest.mark.parametrize("name", BUILDS)
def test_config_and_secret_references_resolve(name: str) -> None:
    """Every ConfigMap a pod reads is in the build; every Secret is in the build (dev) or is one that
    production provides and k8s/README.md documents (base)."""
    docs = built(name)
    readme = (K8S / "README.md").read_text()
    secret_keys: list[tuple[str, str]] = []
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                find(docs, "ConfigMap", source["configMapRef"]["name"])
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    secret_keys.append((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                find(docs, "ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                items = volume["secret"].get("items", [])
                secret_keys += [(volume["secret"]["secretName"], item["key"]) for item in items]
    assert secret_keys
    for secret, key in secret_keys:
        if name == "base":
            assert key in EXTERNAL_SECRETS[secret], (secret, key)
            assert secret in readme, f"k8s/README.md does not document {secret}"
            assert key in readme, f"k8s/README.md does not document {secret}/{key}"
        else:
            assert key in find(docs, "Secret", secret)["data"], (secret, key)


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize("service", SERVICES)
def test_environment_is_read_by_the_service(name: str, service: str) -> None:
    """Every CS_* variable a service gets (its ConfigMap's and its own) is one its settings read."""
    docs = built(name)
    env = environment(only_container(find(docs, "Deployment", service)), docs)
    assert unknown_settings(SERVICES[service].module, env) == []


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize(("service", "variable"), [("ingress", "CS_INGRESS_TRUSTED_PROXIES"),
                                                   ("console", "CS_CONSOLE_TRUSTED_PROXIES")])  # fmt: skip
def test_the_http_services_believe_forwarded_headers_from_the_controllers_network_only(
    name: str, service: str, variable: str
) -> None:
    """The ingress and the console take a client's address (its budget of wrong keys or sign-ins) from
    X-Forwarded-For only when the Ingress controller's pod network sent it, never from anyone ("*")."""
    docs = built(name)
    env = environment(only_container(find(docs, "Deployment", service)), docs)
    assert "FORWARDED_ALLOW_IPS" not in env  # uvicorn's own, which the services no longer read
    trusted = TypeAdapter(TrustedProxies).validate_python(env[variable])
    assert trusted
    assert all(ipaddress.ip_network(entry).is_private for entry in trusted), trusted


@pytest.mark.parametrize("name", BUILDS)
def test_no_secret_values_in_configmaps(name: str) -> None:
    """Database URLs and hosters (api keys) only ever come from Secrets."""
    for config_map in of_kind(built(name), "ConfigMap"):
        assert not set(config_map["data"]) & {"CS_BILLING_DATABASE_URL", "CS_ADAPTER_HOSTERS"}
        assert "postgresql://" not in orjson.dumps(config_map["data"]).decode()


# NATS.


def nats_config(docs: list[Manifest]) -> str:
    """The nats-server configuration the NATS StatefulSet mounts."""
    volumes = pod_spec(find(docs, "StatefulSet", "nats"))["volumes"]
    (name,) = [volume["configMap"]["name"] for volume in volumes if "configMap" in volume]
    config: str = find(docs, "ConfigMap", name)["data"]["nats.conf"]
    return config


@pytest.mark.parametrize("name", BUILDS)
def test_nats_is_a_three_node_jetstream_cluster(name: str) -> None:
    """Three servers with JetStream on their own volumes, routed to each other through stable DNS names."""
    docs = built(name)
    statefulset = find(docs, "StatefulSet", "nats")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    headless = find(docs, "Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True, "routes must resolve before the cluster is ready"
    assert label_selected(headless["selector"], statefulset)
    container = only_container(statefulset)
    config = nats_config(docs)

    assert re.search(r"^jetstream\s*\{", config, re.MULTILINE), "JetStream is not enabled"
    store = re.search(r"^\s*store_dir:\s*(\S+)", config, re.MULTILINE)
    assert store is not None
    claims = {template["metadata"]["name"] for template in spec["volumeClaimTemplates"]}
    mounts = [mount for mount in container["volumeMounts"] if mount["name"] in claims]
    assert any(store.group(1).startswith(mount["mountPath"]) for mount in mounts), "the store is not on a PVC"

    pods = [f"{statefulset['metadata']['name']}-{i}.{spec['serviceName']}" for i in range(spec["replicas"])]
    cluster = re.search(r"^cluster\s*\{(.*?)^\}", config, re.MULTILINE | re.DOTALL)
    assert cluster is not None, "no cluster block"
    routes = re.findall(r"nats://([\w.-]+):(\d+)", cluster.group(1))
    assert sorted(routes) == [(pod, str(port_number(container, "cluster"))) for pod in pods]
    assert re.search(r"^server_name:\s*\$POD_NAME$", config, re.MULTILINE), "JetStream needs unique server names"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]

    budget = find(docs, "PodDisruptionBudget", "nats")["spec"]
    assert budget["maxUnavailable"] == 1
    assert label_selected(budget["selector"]["matchLabels"], statefulset)

    shared = find(docs, "ConfigMap", "computeshare")["data"]
    assert shared["CS_NATS_STREAM_REPLICAS"] == "3"
    client_port = port_number(container, "client")
    assert shared["CS_NATS_URL"].split(",") == [f"nats://{pod}:{client_port}" for pod in pods]


def check_nats_config(config: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``nats-server -t``: parse the configuration as the pods would (with their ``$POD_NAME``) and exit."""
    path.write_text(config)
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)],
        env={**os.environ, "POD_NAME": "nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nats_server_accepts_its_config(tmp_path: Path) -> None:
    """The real nats-server accepts the configuration, laid out as in the pod (the ConfigMap in /etc/nats, the
    auth Secret in /etc/nats-auth; the dev overlay's), and would refuse an unknown or misplaced field."""
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats-auth").mkdir()
    (tmp_path / "nats-auth" / "auth.conf").write_text(
        secret_value(built("dev"), "computeshare-nats-server", "auth.conf")
    )
    config = nats_config(built("base"))
    accepted = check_nats_config(config, tmp_path / "nats" / "nats.conf")
    assert accepted.returncode == 0, accepted.stderr
    refused = check_nats_config(config.replace("store_dir:", "store_directory:"), tmp_path / "nats" / "bad.conf")
    assert refused.returncode != 0


@pytest.mark.parametrize("name", BUILDS)
def test_nats_accepts_no_anonymous_client_and_each_service_has_its_own_credentials(name: str) -> None:
    """nats-server includes the operator-mode auth that `computeshare nats init` writes (Secret
    computeshare-nats-server); each service mounts only its own creds file and points CS_NATS_CREDS at it."""
    docs = built(name)
    config = nats_config(docs)
    include = re.search(r'^include\s+"([^"]+)"', config, re.MULTILINE)
    assert include is not None, "no auth included"
    statefulset = find(docs, "StatefulSet", "nats")
    mounts = {m["name"]: m["mountPath"] for m in only_container(statefulset)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    auth_volume = next(
        n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "computeshare-nats-server"
    )
    assert str(Path("/etc/nats", include.group(1)).resolve()) == f"{mounts[auth_volume]}/auth.conf"
    if name == "dev":
        assert "operator:" in secret_value(docs, "computeshare-nats-server", "auth.conf")
    for deployment, shape in SERVICES.items():
        workload = find(docs, "Deployment", deployment)
        container = only_container(workload)
        creds = environment(container, docs)["CS_NATS_CREDS"]
        [volume] = [
            v
            for v in pod_spec(workload)["volumes"]
            if v.get("secret", {}).get("secretName") == "computeshare-nats-creds"
        ]
        assert volume["secret"]["items"] == [{"key": f"{shape.module}.creds", "path": f"{shape.module}.creds"}]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert creds == f"{mount['mountPath']}/{shape.module}.creds"
        assert mount["readOnly"] is True


# PostgreSQL, secrets and the dev overlay.


def test_base_points_postgres_at_an_external_database() -> None:
    """In production `postgres` is a name for an external database, and the base carries no Secret at all."""
    docs = built("base")
    service = find(docs, "Service", "postgres")["spec"]
    assert service["type"] == "ExternalName"
    assert service["externalName"]
    assert not [doc for doc in workloads(docs) if doc["metadata"]["name"] == "postgres"]
    assert of_kind(docs, "Secret") == []


def test_dev_runs_a_reference_postgres_that_billing_reaches() -> None:
    """The dev overlay's PostgreSQL 15 is behind `postgres`, with the credentials billing's URL carries."""
    docs = built("dev")
    statefulset = find(docs, "StatefulSet", "postgres")
    container = only_container(statefulset)
    assert container["image"].startswith("postgres:15")
    service = find(docs, "Service", "postgres")["spec"]
    assert "externalName" not in service
    assert service["type"] == "ClusterIP"
    assert label_selected(service["selector"], statefulset)
    assert statefulset["spec"]["serviceName"] == "postgres"

    url = urlsplit(secret_value(docs, "computeshare-billing", "database-url"))
    env = {var["name"]: var for var in container["env"]}
    assert (url.hostname, url.port) == ("postgres", port_number(container, "postgres"))
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.path == "/" + env["POSTGRES_DB"]["value"]
    password_ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert url.password == secret_value(docs, password_ref["name"], password_ref["key"])


def test_dev_secrets_are_placeholders() -> None:
    """The only credentials in the repository are the dev overlay's, and they say so."""
    docs = built("dev")
    assert "dev-only" in secret_value(docs, "postgres", "password")
    hosters = orjson.loads(secret_value(docs, "computeshare-hosters", "hosters.json"))
    assert all(hoster.get("api_key") is None for hoster in hosters)


def test_dev_hosters_are_valid_and_served_by_the_simulator() -> None:
    """The adapter accepts the dev hosters, and they point at the simulator deployed beside them."""
    docs = built("dev")
    hosters = [
        HosterConfig.model_validate(item)
        for item in orjson.loads(secret_value(docs, "computeshare-hosters", "hosters.json"))
    ]
    assert hosters
    simulator = find(docs, "Service", "simulator")["spec"]
    find(docs, "Deployment", "simulator")
    for hoster in hosters:
        url = urlsplit(hoster.base_url)
        assert url.hostname == "simulator"
        assert url.port in {port["port"] for port in simulator["ports"]}


def test_dev_overlay_is_small_and_restricted() -> None:
    """Fewer replicas, one namespace, and the namespace enforces the restricted Pod Security Standard."""
    docs = built("dev")
    for autoscaler in of_kind(docs, "HorizontalPodAutoscaler"):
        assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (1, 2)
    namespace = find(docs, "Namespace", "computeshare-dev")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"computeshare-dev"}


# The kustomize stand-in refuses what it does not build.


def write_kustomization(directory: Path, spec: Manifest) -> Path:
    """A kustomization with one ConfigMap resource, plus ``spec``."""
    (directory / "config.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n")
    (directory / KUSTOMIZATION).write_text(yaml.safe_dump({"resources": ["config.yaml"], **spec}))
    return directory


@pytest.mark.parametrize(
    "spec",
    [
        {"images": [{"name": "computeshare-ingress", "newTag": "1"}]},
        {"secretGenerator": [{"name": "s", "literals": ["a=b"]}]},
        {"patches": [{"path": "config.yaml", "target": {"kind": "Service"}}]},
        {"resources": ["config.yaml", "missing.yaml"]},
    ],
    ids=["unbuilt-field", "hashed-secret-names", "patch-matching-nothing", "missing-resource"],
)
def test_stand_in_refuses_what_it_cannot_build(tmp_path: Path, spec: Manifest) -> None:
    """A kustomization the stand-in would build wrongly fails the tests instead."""
    with pytest.raises(KustomizeError):
        build(write_kustomization(tmp_path, spec))
