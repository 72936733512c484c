"""The whole system as processes on this machine: NATS, PostgreSQL, simulators and the four services."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.devstack.engine import LlamaCppSpec, start_llamacpp
from libs.devstack.infra import PostgresCluster, start_nats
from libs.devstack.processes import ManagedProcess, free_port, wait_for_http, wait_for_port
from libs.devstack.tinymodel import tiny_model
from libs.platform.natsauth import AuthStore, service_creds

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_HOSTER_ID = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"
DEMO_MODEL = "demo-model"
DEMO_EMBEDDING_MODEL = "demo-embedding"


@dataclass
class SimulatorSpec:
    """One simulated hoster process; ``env`` holds its ``CS_SIMULATOR_*`` settings."""

    name: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Its OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass
class AdapterSpec:
    """One hoster adapter process and the hosters it fronts (``HosterConfig`` dicts)."""

    name: str
    hosters: list[dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class AgentSpec:
    """A hoster that joins the way a stranger does: registered with ``computeshare hoster register``, its
    agent started with its own credentials file, the upstream's URL and a small config (``AgentConfig``)."""

    name: str
    upstream_url: str
    config: dict[str, Any]
    region: str | None = None
    cloud: bool = False
    hoster_id: str = ""  # filled in when registered
    console_token: str = ""  # the hoster's console token (``ngh_...``), printed once by the registration

    @property
    def models(self) -> list[str]:
        """The network names of the models it serves."""
        return [m["name"] for m in self.config["models"]]


@dataclass
class NatsNode:
    """One server of a NATS cluster on loopback: its client port, cluster route port and monitoring port."""

    name: str
    port: int
    route_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://127.0.0.1:{self.port}"


def nats_cluster(size: int = 3) -> list[NatsNode]:
    """``size`` nodes named ``nats-0``, ``nats-1``, ... on free loopback ports, for ``StackConfig.nats_nodes``."""
    return [NatsNode(f"nats-{i}", free_port(), free_port(), free_port()) for i in range(size)]


def replica_name(service: str, index: int, count: int) -> str:
    """A replica's process name: the service's own name when it runs alone, ``<service>-<index>`` otherwise."""
    return f"{service}-{index}" if count > 1 else service


@dataclass
class StackConfig:
    """Where and how to run the stack.

    NATS is one server named ``nats`` on ``nats_port``, unless ``nats_nodes`` lists the nodes of a cluster
    (``nats_cluster(3)``); then every service gets all their URLs and the streams get up to three replicas.
    ``nats_monitor_port`` serves the single server's monitoring endpoints (``/varz``), for the benchmark.
    """

    workdir: Path
    ingress_ports: list[int] = field(default_factory=lambda: [8080])
    nats_port: int = 4222
    nats_monitor_port: int | None = None
    nats_nodes: list[NatsNode] = field(default_factory=list)
    postgres_port: int = 55432
    database: str = "computeshare"
    simulators: list[SimulatorSpec] = field(default_factory=list)
    # Real inference engines (llama-cpp-python's server on tiny models), started before the adapters.
    engines: list[LlamaCppSpec] = field(default_factory=list)
    adapters: list[AdapterSpec] = field(default_factory=list)
    agents: list[AgentSpec] = field(default_factory=list)
    routers: int = 1
    billings: int = 1
    log_dir: Path | None = None
    log_format: str = "json"
    durable_postgres: bool = True
    service_env: dict[str, str] = field(default_factory=dict)
    # The web console (``services/console``) on this port, and the ingress passing ``/console`` to it; off
    # (``None``) in test stacks that do not need it, so they start no extra process.
    console_port: int | None = None
    # Spot checks (README, "Verification"): the first router sends them through the first ingress, billed to
    # an account of the network's made with these credits (``None``: no spot checks), at this rate.
    spot_check_credits: str | None = None
    spot_checks_per_hour: float = 6.0

    @property
    def api_base(self) -> str:
        """The first ingress's OpenAI base URL."""
        return f"http://127.0.0.1:{self.ingress_ports[0]}/v1"

    @property
    def console_url(self) -> str | None:
        """The console as the first ingress serves it (``None`` without a console)."""
        return f"http://127.0.0.1:{self.ingress_ports[0]}/console" if self.console_port is not None else None

    @property
    def ingress_names(self) -> list[str]:
        """Process names of the ingress replicas, in the order of ``ingress_ports``."""
        return [replica_name("ingress", i, len(self.ingress_ports)) for i in range(len(self.ingress_ports))]

    def process_names(self) -> list[str]:
        """Every process the stack starts, in start order; ``ValueError`` if a name is used twice."""
        names = [
            *([n.name for n in self.nats_nodes] or ["nats"]),
            "postgres",
            *(sim.name for sim in self.simulators),
            *(engine.name for engine in self.engines),
            *(replica_name("billing", i, self.billings) for i in range(self.billings)),
            *(replica_name("router", i, self.routers) for i in range(self.routers)),
            *(adapter.name for adapter in self.adapters),
            *(agent.name for agent in self.agents),
            *(["console"] if self.console_port is not None else []),
            *self.ingress_names,
        ]
        twice = sorted(name for name, count in Counter(names).items() if count > 1)
        if twice:
            raise ValueError(f"process names must be unique; used more than once: {', '.join(twice)}")
        return names


def demo_hoster(base_url: str, model: str = DEMO_MODEL, upstream_model: str | None = None,
                api_key: str | None = None, capacity: int | None = None,
                embedding_model: str | None = None, profile: str = "openai",
                context_length: int = 8192) -> dict[str, Any]:  # fmt: skip
    """The demo hoster: a community GPU serving ``model`` (chat and text completions) at a demo price,
    ``capacity`` requests at once (default ``CS_DEMO_CAPACITY``, else 256), and ``embedding_model`` for
    embeddings if given; ``profile`` names the kind of server it is."""
    models: list[dict[str, Any]] = [
        {"name": model, "upstream_model": upstream_model or model, "input_price": "0.50",
         "output_price": "1.50", "context_length": context_length, "endpoints": ["chat.completions", "completions"]}
    ]  # fmt: skip
    if embedding_model is not None:
        models.append({"name": embedding_model, "input_price": "0.02", "output_price": "0", "context_length": 8192,
                       "capabilities": [], "endpoints": ["embeddings"]})  # fmt: skip
    return {
        "id": DEMO_HOSTER_ID,
        "name": "demo-hoster",
        "base_url": base_url,
        "api_key": api_key,
        "cloud": False,
        "capacity": capacity if capacity is not None else int(os.environ.get("CS_DEMO_CAPACITY", "256")),
        "models": models,
        "profile": profile,
    }


def llamacpp_hoster(name: str = "llamacpp", model: str = DEMO_MODEL, port: int | None = None, seed: int = 0,
                    capacity: int = 1) -> tuple[LlamaCppSpec, dict[str, Any]]:  # fmt: skip
    """A llama.cpp hoster: llama-cpp-python's server on a free port (or ``port``) serving the tiny model of
    ``seed`` as ``model``, and the demo hoster fronting it with the ``llamacpp`` profile. The server computes
    one request at a time; ``capacity`` above 1 queues requests at the engine."""
    engine = LlamaCppSpec(name, port or free_port(), {model: tiny_model(seed)})
    hoster = demo_hoster(engine.base_url, model=model, capacity=capacity, profile="llamacpp",
                         context_length=engine.context_length)  # fmt: skip
    return engine, hoster


def demo_config(workdir: Path, **overrides: Any) -> StackConfig:
    """``make run``'s stack: one simulator and one adapter, or ``CS_DEMO_UPSTREAM_URL`` instead of the
    simulator (any OpenAI-compatible server: vLLM, llama.cpp, Ollama), or with ``CS_DEMO_ENGINE=llamacpp`` a
    real engine (llama-cpp-python's server on a tiny random model) behind the adapter."""
    config = StackConfig(workdir=workdir, **overrides)
    upstream = os.environ.get("CS_DEMO_UPSTREAM_URL")
    engine = os.environ.get("CS_DEMO_ENGINE", "simulator")
    if engine not in ("simulator", "llamacpp"):
        raise ValueError(f"CS_DEMO_ENGINE is simulator or llamacpp, not {engine!r}")
    if upstream:
        hoster = demo_hoster(
            upstream.rstrip("/"),
            model=os.environ.get("CS_DEMO_MODEL", DEMO_MODEL),
            upstream_model=os.environ.get("CS_DEMO_UPSTREAM_MODEL"),
            api_key=os.environ.get("CS_DEMO_UPSTREAM_API_KEY"),
        )
    elif engine == "llamacpp":
        spec, hoster = llamacpp_hoster(port=int(os.environ.get("CS_DEMO_ENGINE_PORT", "9110")),
                                       capacity=int(os.environ.get("CS_DEMO_CAPACITY", "4")))  # fmt: skip
        config.engines.append(spec)
    else:
        simulator = SimulatorSpec("simulator", int(os.environ.get("CS_DEMO_SIMULATOR_PORT", "9100")),
                                  {"CS_SIMULATOR_TOKENS_PER_SECOND": "40", "CS_SIMULATOR_TTFT_MS": "150",
                                   "CS_SIMULATOR_REPLY_TOKENS": "48"})  # fmt: skip
        config.simulators.append(simulator)
        hoster = demo_hoster(simulator.base_url, embedding_model=DEMO_EMBEDDING_MODEL)
        # A second hoster joins as a stranger would: registered with the CLI, its agent dialling out with its
        # own credentials, serving the same model at its own price.
        second = SimulatorSpec("simulator-2", int(os.environ.get("CS_DEMO_AGENT_SIMULATOR_PORT", "9101")),
                               {"CS_SIMULATOR_TOKENS_PER_SECOND": "60", "CS_SIMULATOR_TTFT_MS": "200",
                                "CS_SIMULATOR_REPLY_TOKENS": "48"})  # fmt: skip
        config.simulators.append(second)
        config.agents.append(AgentSpec("demo-agent", second.base_url, demo_agent_config(DEMO_MODEL)))
    config.adapters.append(AdapterSpec("hoster_adapter", [hoster]))
    return config


def demo_agent_config(model: str, upstream_model: str = DEMO_MODEL, capacity: int = 64) -> dict[str, Any]:
    """An agent's config file, as a GPU owner would write it (``upstream_model``: the local server's name)."""
    return {
        "models": [
            {
                "name": model,
                "upstream_model": upstream_model,
                "input_price": "0.40",
                "output_price": "1.20",
                "context_length": 8192,
            }
        ],
        "capacity": capacity,
        "profile": "openai",
    }


def throwaway_config(**overrides: Any) -> StackConfig:
    """A throwaway stack on free ports in a temporary directory (tests and benchmarks)."""
    workdir = Path(tempfile.mkdtemp(prefix="cs-stack-"))
    workdir.chmod(0o755)  # postgres (a different user when we are root) must reach its data dir
    defaults: dict[str, Any] = {
        # Probes (unbilled requests to new hosters) would add requests tests do not expect; the tests of
        # probes turn them on.
        "service_env": {"CS_ROUTER_PROBE_INTERVAL_S": "0"},
        "workdir": workdir,
        "ingress_ports": [free_port()],
        "nats_port": free_port(),
        "postgres_port": free_port(),
        "log_dir": workdir / "logs",
        "durable_postgres": False,
    }
    service_env = {**defaults["service_env"], **overrides.pop("service_env", {})}
    defaults.update(overrides, service_env=service_env)
    return StackConfig(**defaults)


class Stack:
    """Starts and stops every process of a ``StackConfig``; processes are reachable by name."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: dict[str, ManagedProcess] = {}
        self.postgres: PostgresCluster | None = None
        self.database_url = ""
        # The network's spot check account and its key (``spot_check_env``).
        self.spot_check_account: str | None = None
        self.spot_check_key: str | None = None
        # How each process was started, so ``restart`` starts it again the same way.
        self._starters: dict[str, Callable[[], ManagedProcess]] = {}
        # Where each process serves /metrics (CS_METRICS_PORT), by process name.
        self.metrics_ports: dict[str, int] = {}
        # The NATS authority: operator, accounts, revocations; every process gets credentials of its own.
        self.auth = AuthStore(config.workdir / "nats-auth").init()
        self.creds_dir = config.workdir / "creds"
        if config.log_dir is not None:
            config.log_dir.mkdir(parents=True, exist_ok=True)

    def _log(self, name: str) -> Path | None:
        return self.config.log_dir / f"{name}.log" if self.config.log_dir else None

    @property
    def nats_url(self) -> str:
        """URL of the stack's NATS server; for a cluster, every node's URL, comma-separated."""
        if self.config.nats_nodes:
            return ",".join(node.url for node in self.config.nats_nodes)
        return f"nats://127.0.0.1:{self.config.nats_port}"

    def service_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment every service process gets."""
        env = dict(os.environ)
        env.update(
            {
                "CS_NATS_URL": self.nats_url,
                "CS_LOG_FORMAT": self.config.log_format,
                "CS_BILLING_DATABASE_URL": self.database_url,
                "CS_NATS_AUTH_DIR": str(self.auth.directory),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if len(self.config.nats_nodes) > 1:
            # A stream survives the loss of a node only with a replica on another one.
            env["CS_NATS_STREAM_REPLICAS"] = str(min(3, len(self.config.nats_nodes)))
        env.update(self.config.service_env)
        env.update(extra or {})
        return env

    def start(self) -> Stack:
        """Start everything in dependency order and wait until the API serves every configured model."""
        c = self.config
        c.process_names()
        try:
            if c.nats_nodes:
                for node in c.nats_nodes:
                    self.start_nats_node(node, wait=False)
                self.wait_for_jetstream(c.nats_nodes)
            else:
                self.start_nats_server()
            self.start_postgres()
            assert self.postgres is not None
            self.database_url = self.postgres.create_database(c.database)
            for sim in c.simulators:
                self.start_simulator(sim)
            for engine in c.engines:
                self.start_engine(engine)
            for i in range(c.billings):
                self.start_service(replica_name("billing", i, c.billings), "billing", "billing ready")
            checker = self.spot_check_env() if c.spot_check_credits is not None else {}
            for i in range(c.routers):
                self.start_service(replica_name("router", i, c.routers), "router", "router ready",
                                   checker if i == 0 else None)  # fmt: skip
            for adapter in c.adapters:
                self.start_adapter(adapter)
            for agent in c.agents:
                self.register_agent(agent)
                self.start_agent(agent)
            if c.console_port is not None:
                self.start_console(c.console_port)
            for port, name in zip(c.ingress_ports, c.ingress_names, strict=True):
                self.start_ingress(port, name)
            self.wait_for_models()
        except BaseException:
            self.stop()
            raise
        return self

    def start_nats_server(self) -> ManagedProcess:
        """Start (or restart) the single NATS server ``nats``."""
        self._check_stopped("nats")
        c = self.config
        process = self.processes["nats"] = start_nats(
            c.nats_port, c.workdir / "nats", self.auth, self._log("nats"), monitor_port=c.nats_monitor_port
        )
        self._starters["nats"] = self.start_nats_server
        return process

    def start_nats_node(self, node: NatsNode, wait: bool = True) -> ManagedProcess:
        """Start (or restart) one node of the NATS cluster from its own store directory; with ``wait``, until
        it follows a JetStream meta leader (a restarted node has rejoined the cluster)."""
        self._check_stopped(node.name)
        peers = [n.route_port for n in self.config.nats_nodes if n.name != node.name]
        process = self.processes[node.name] = start_nats(
            node.port, self.config.workdir / node.name, self.auth, self._log(node.name), name=node.name,
            cluster=(node.route_port, peers), server_name=node.name, monitor_port=node.monitor_port,
        )  # fmt: skip
        self._starters[node.name] = lambda: self.start_nats_node(node)
        if wait:
            self.wait_for_jetstream([node])
        return process

    def wait_for_jetstream(self, nodes: list[NatsNode], timeout_s: float = 30) -> None:
        """Block until each of ``nodes`` knows the cluster's JetStream meta leader (streams can be created)."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while not self._jetstream(node).get("meta_cluster", {}).get("leader"):
                self.processes[node.name].check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} has no JetStream meta leader after {timeout_s}s")
                time.sleep(0.1)

    def nats_stream_leader(self, stream: str) -> str | None:
        """The name of the NATS node that leads ``stream`` now, as the live nodes report it."""
        for node in self.config.nats_nodes:
            if not self.processes[node.name].alive():
                continue
            for account in self._jetstream(node, "?accounts=true&streams=true").get("account_details", []):
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream and detail.get("cluster", {}).get("leader"):
                        leader: str = detail["cluster"]["leader"]
                        return leader
        return None

    def wait_for_stream_leader(self, stream: str, timeout_s: float = 30, not_on: str | None = None) -> str:
        """Block until ``stream`` has a leader (other than the node ``not_on``, say one just killed); its name."""
        deadline = time.monotonic() + timeout_s
        while (leader := self.nats_stream_leader(stream)) is None or leader == not_on:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout_s}s")
            time.sleep(0.1)
        return leader

    @staticmethod
    def _jetstream(node: NatsNode, query: str = "") -> dict[str, Any]:
        """The node's ``/jsz`` monitoring report; empty while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz{query}", timeout=2) as response:
                report: dict[str, Any] = json.load(response)
                return report
        except (OSError, ValueError):
            return {}

    def start_postgres(self) -> ManagedProcess:
        """Start (or restart) PostgreSQL in the stack's data directory."""
        self._check_stopped("postgres")
        c = self.config
        self.postgres = PostgresCluster(c.workdir / "pgdata", c.postgres_port, self._log("postgres"),
                                        durable=c.durable_postgres)  # fmt: skip
        self.postgres.start()
        assert self.postgres.process is not None
        self.processes["postgres"] = self.postgres.process
        self._starters["postgres"] = self.start_postgres
        return self.postgres.process

    def start_simulator(self, sim: SimulatorSpec) -> ManagedProcess:
        """Start (or restart) one simulated hoster."""
        env = self.service_env({"CS_SIMULATOR_PORT": str(sim.port), **sim.env})
        process = self._spawn(sim.name, "simulator", env, None)
        self._starters[sim.name] = lambda: self.start_simulator(sim)
        wait_for_port(sim.port, 20, process)
        return process

    def start_engine(self, engine: LlamaCppSpec) -> ManagedProcess:
        """Start (or restart) one inference engine and wait until it serves its models."""
        self._check_stopped(engine.name)
        self._starters[engine.name] = lambda: self.start_engine(engine)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = self.processes[engine.name] = start_llamacpp(engine, self.config.workdir, env,
                                                              self._log(engine.name))  # fmt: skip
        return process

    def start_adapter(self, adapter: AdapterSpec) -> ManagedProcess:
        """Start (or restart) one hoster adapter."""
        env = self.service_env({"CS_ADAPTER_HOSTERS": json.dumps(adapter.hosters), **adapter.env})
        self._starters[adapter.name] = lambda: self.start_adapter(adapter)
        return self._spawn(adapter.name, "hoster_adapter", env, "hoster_adapter ready")

    def register_agent(self, agent: AgentSpec) -> str:
        """Register the agent's hoster with the CLI (once per work directory: a restart keeps its identity and
        credentials, as a GPU owner's box would); its hoster id."""
        creds = self.creds_dir / f"{agent.name}.creds"
        identity = self.config.workdir / f"{agent.name}.hoster.json"
        known = json.loads(identity.read_text()) if creds.exists() and identity.exists() else {}
        # A registration from before hosters had console tokens has none to print: register the agent anew.
        if known.get("console_token"):
            agent.hoster_id, agent.console_token = known["id"], known["console_token"]
            return agent.hoster_id
        creds.unlink(missing_ok=True)
        # A live hoster's name is unique: the stale registration of this agent (this stack's own, by name)
        # is revoked first, as its credentials are gone anyway.
        for stale in self.computeshare("hoster", "list"):
            if stale["name"].lower() == agent.name.lower() and not stale["revoked"]:
                self.computeshare("hoster", "revoke", stale["id"])
        args = ["hoster", "register", "--name", agent.name, "--creds", str(creds)]
        args += [*(["--region", agent.region] if agent.region else []), *(["--cloud"] if agent.cloud else [])]
        registered = self.computeshare(*args)
        identity.touch(mode=0o600)  # it holds the console token
        identity.write_text(json.dumps(registered))
        agent.hoster_id, agent.console_token = registered["id"], registered.get("console_token", "")
        return agent.hoster_id

    def start_agent(self, agent: AgentSpec) -> ManagedProcess:
        """Start (or restart) a hoster agent: ``computeshare-agent --creds --upstream --config``."""
        config = self.config.workdir / f"{agent.name}.agent.json"
        config.write_text(json.dumps(agent.config))
        creds = self.creds_dir / f"{agent.name}.creds"
        argv = ["--creds", str(creds), "--upstream", agent.upstream_url, "--config", str(config)]
        env = self.service_env({"CS_NATS_CREDS": str(creds)})
        self._starters[agent.name] = lambda: self.start_agent(agent)
        return self._spawn(agent.name, "hoster_adapter", env, "hoster_adapter ready", argv)

    def start_console(self, port: int) -> ManagedProcess:
        """Start (or restart) the web console on ``port``. Its session secret is kept in the work directory, so
        a restarted console (or ``make run`` again) keeps browsers signed in."""
        secret = self.config.workdir / "console-secret"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_urlsafe(48))
        # Behind the ingress's /console pass-through, on loopback: its X-Forwarded-For names the browser.
        own = {"CS_CONSOLE_PORT": str(port), "CS_CONSOLE_SESSION_SECRET": secret.read_text().strip(),
               "CS_CONSOLE_TRUSTED_PROXIES": "127.0.0.1,::1"}  # fmt: skip
        env = self.service_env(own)
        process = self._spawn("console", "console", env, None)
        self._starters["console"] = lambda: self.start_console(port)
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 30, process)
        return process

    def start_ingress(self, port: int, name: str = "ingress") -> ManagedProcess:
        """Start (or restart) one ingress on ``port`` (passing ``/console`` to the console when there is one)."""
        env = self.service_env({"CS_INGRESS_PORT": str(port), "CS_INSTANCE_ID": name})
        if self.config.console_port is not None:
            env["CS_INGRESS_CONSOLE_URL"] = f"http://127.0.0.1:{self.config.console_port}"
        process = self._spawn(name, "ingress", env, None)
        self._starters[name] = lambda: self.start_ingress(port, name)
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 30, process)
        return process

    def start_service(
        self, name: str, module: str, marker: str | None, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Start (or restart) a service by module name (``router``, ``billing``, ...), ``env`` added to its
        environment."""
        self._starters[name] = lambda: self.start_service(name, module, marker, env)
        return self._spawn(name, module, {**self.service_env(), **(env or {})}, marker)

    def spot_check_env(self) -> dict[str, str]:
        """The network's spot check account (made once, with ``spot_check_credits``) and the environment of
        the router that sends the checks with its key."""
        c = self.config
        if self.spot_check_key is None:
            self.spot_check_account, self.spot_check_key = self.create_account(c.spot_check_credits or "0",
                                                                               name="spot checks")  # fmt: skip
        return {
            "CS_ROUTER_SPOT_CHECK_API_BASE": c.api_base,
            "CS_ROUTER_SPOT_CHECK_API_KEY": self.spot_check_key,
            "CS_ROUTER_SPOT_CHECKS_PER_HOUR": str(c.spot_checks_per_hour),
        }

    def restart(self, name: str) -> ManagedProcess:
        """Start a process again the way it was started before, and wait until it is ready; one still
        running is stopped first. Works for every process: a NATS node, postgres, any replica."""
        if name not in self._starters:
            raise KeyError(f"no process named {name} was started")
        self._stop_one(name)
        return self._starters[name]()

    def _check_stopped(self, name: str) -> None:
        old = self.processes.get(name)
        if old is not None and old.alive():
            raise RuntimeError(f"{name} is already running")

    def _spawn(
        self, name: str, module: str, env: dict[str, str], marker: str | None, argv: list[str] | None = None
    ) -> ManagedProcess:
        self._check_stopped(name)
        if module != "simulator" and "CS_METRICS_PORT" not in self.config.service_env:
            # Replicas share the machine: each serves its metrics on a port of its own, not all on 9090.
            env["CS_METRICS_PORT"] = str(free_port())
            self.metrics_ports[name] = int(env["CS_METRICS_PORT"])
        if module != "simulator" and "CS_NATS_CREDS" not in env:
            env["CS_NATS_CREDS"] = str(self.creds(name, module))
        process = ManagedProcess(
            name, [sys.executable, "-m", f"services.{module}", *(argv or [])], env=env, log_path=self._log(name),
            cwd=REPO_ROOT, ready_marker=marker,
        ).start()  # fmt: skip
        self.processes[name] = process
        if marker is not None:
            process.wait_ready(30)
        return process

    def creds(self, name: str, module: str) -> Path:
        """The credentials file of process ``name`` (``services.<module>``), minted on first use."""
        return service_creds(self.auth, self.creds_dir, name, module)

    def wait_for_models(self, timeout_s: float = 30) -> None:
        """Block until ``GET /v1/models`` on every ingress lists every configured model."""
        wanted = {m["name"] for a in self.config.adapters for h in a.hosters for m in h["models"]}
        wanted |= {model for agent in self.config.agents for model in agent.models}
        deadline = time.monotonic() + timeout_s
        for port in self.config.ingress_ports:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                        live = {m["id"] for m in json.load(response)["data"]}
                    if wanted <= live:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"models {wanted} not live on port {port}\n{self.logs_tail()}")
                time.sleep(0.1)

    def computeshare(self, *args: str) -> Any:
        """Run the ``computeshare`` admin command against this stack's database; its ``--json`` output."""
        result = subprocess.run(
            [sys.executable, "-m", "services.billing.cli", "--json", *args],
            env=self.service_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode not in (0, 1):
            raise RuntimeError(f"computeshare {' '.join(args)} failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def create_account(
        self, credits: str = "100", rpm: int | None = None, tpm: int | None = None, name: str = "test"
    ) -> tuple[str, str]:
        """A new account with ``credits`` and one key: ``(account_id, key)``."""
        account = self.computeshare("account", "create", "--name", name, "--credits", credits)
        limits = [*(["--rpm", str(rpm)] if rpm else []), *(["--tpm", str(tpm)] if tpm else [])]
        key = self.computeshare("key", "create", account["id"], *limits)
        return account["id"], key["key"]

    def create_management_key(self, account_id: str, label: str | None = None) -> str:
        """A new management key of ``account_id`` (``computeshare key create ACCOUNT --management``)."""
        labelled = ["--label", label] if label else []
        created: dict[str, Any] = self.computeshare("key", "create", account_id, "--management", *labelled)
        key: str = created["key"]
        return key

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crash, not a shutdown)."""
        process = self.processes[name]
        process.signal(signal.SIGKILL)
        process.stop(timeout_s=5)

    def stop(self) -> None:
        """Stop every process, newest first (a restarted process keeps its place)."""
        for name in reversed(list(self.processes)):
            self._stop_one(name)

    def _stop_one(self, name: str) -> None:
        """Stop one process if it runs; PostgreSQL with a fast shutdown."""
        if name == "postgres" and self.postgres is not None:
            self.postgres.stop()
        elif name in self.processes:
            self.processes[name].stop()

    def logs_tail(self, lines: int = 30) -> str:
        """The last lines of every process's log (for a failing test's report)."""
        return "\n".join(f"--- {n} ---\n{p.tail(lines)}" for n, p in self.processes.items())
