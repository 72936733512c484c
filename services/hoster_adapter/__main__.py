"""``python -m services.hoster_adapter``: a platform adapter configured by ``CS_ADAPTER_*``, or, with
``--creds``, the hoster agent a GPU owner runs next to their server (``computeshare-agent``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvloop

from libs.platform.natsauth import creds_jwt, decode_jwt
from services.hoster_adapter.app import build_app
from services.hoster_adapter.settings import AdapterSettings, AgentConfig, hoster_of_credentials


def parser() -> argparse.ArgumentParser:
    """The agent's command line."""
    root = argparse.ArgumentParser(
        prog="computeshare-agent",
        description="Serve a local OpenAI-compatible server (vLLM, llama.cpp, Ollama) on the computeshare network. "
        "The agent dials out to the network's NATS: no inbound port is needed.",
    )
    root.add_argument("--creds", type=Path, help="the credentials file `computeshare hoster register` wrote")
    root.add_argument("--upstream", help="the local server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    root.add_argument("--config", type=Path, help="models, prices, capacity and profile (.toml or .json)")
    root.add_argument("--nats", help="the network's NATS URL (default: CS_NATS_URL)")
    return root


def agent_settings(args: argparse.Namespace) -> AdapterSettings:
    """The adapter's settings for one hoster, from the agent's arguments."""
    if args.upstream is None or args.config is None:
        raise SystemExit("computeshare-agent: --creds needs --upstream and --config")
    creds = args.creds.read_text()
    hoster_id = hoster_of_credentials(creds)
    if hoster_id is None:
        raise SystemExit(f"computeshare-agent: {args.creds} is not a hoster's credentials file")
    name = str(decode_jwt(creds_jwt(creds)).get("name") or hoster_id)
    hoster = AgentConfig.load(args.config).hoster(hoster_id, name, args.upstream)
    overrides: dict[str, object] = {"nats_creds": args.creds, "hosters": [hoster]}
    if args.nats:
        overrides["nats_url"] = args.nats
    return AdapterSettings(**overrides)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """Run the adapter (or agent) until SIGINT/SIGTERM; on SIGTERM it stops taking attempts and finishes
    those in flight."""
    args = parser().parse_args(argv)
    settings = agent_settings(args) if args.creds is not None else AdapterSettings()
    uvloop.run(build_app(settings).run())


if __name__ == "__main__":
    main()
