"""``python -m libs.devstack run``: the local stack of ``make run``, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from libs.devstack.processes import ProcessDied
from libs.devstack.stack import REPO_ROOT, Stack, demo_config

BANNER = """
computeshare is up: {api}

demo API key (100 credits, also in {key_file}):
  {key}

  curl {api}/chat/completions -H "Authorization: Bearer {key}" -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], "stream": true}}'

hosters: the platform's demo-hoster, and {agents} (joined as strangers do: `computeshare hoster list`)

console: {console}
  sign in to the demo account with its management key (also in {management_file}):
    {management_key}
  or as the hoster {agent_name} with its console token:
    {console_token}

Ctrl-C stops everything.
"""


def demo_key(stack: Stack, path: Path) -> str:
    """The demo account's key: the one saved by an earlier run while it still works, else a new account
    with 100 credits and a new key, saved to ``path``."""
    if path.exists():
        saved = path.read_text().strip()
        info = stack.computeshare("key", "find", saved)
        if info.get("status") == "valid":
            return saved
    _, key = stack.create_account(credits="100", name="demo")
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def demo_management_key(stack: Stack, api_key: str, path: Path) -> str:
    """A management key of the demo account (the one ``api_key`` belongs to): the saved one while it still
    works, else a new one, saved to ``path``."""
    if path.exists():
        saved = path.read_text().strip()
        info = stack.computeshare("key", "find", saved)
        if info.get("status") == "valid" and info.get("kind") == "management":
            return saved
    account_id = stack.computeshare("key", "find", api_key)["account_id"]
    key = stack.create_management_key(account_id)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def main() -> None:
    """Run the stack in the foreground; SIGINT or SIGTERM stops every process cleanly."""
    parser = argparse.ArgumentParser(prog="python -m libs.devstack")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".computeshare")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--console-port", type=int, default=8090, help="where the console process listens")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    config = demo_config(args.workdir, ingress_ports=[args.port], log_format="text", console_port=args.console_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config)
    try:
        stack.start()
    except (ProcessDied, TimeoutError, OSError) as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        sys.exit(1)
    model = config.adapters[0].hosters[0]["models"][0]["name"]
    key = demo_key(stack, args.workdir / "demo-key")
    management_file = args.workdir / "demo-management-key"
    management_key = demo_management_key(stack, key, management_file)
    agents = ", ".join(f"{a.name} ({a.hoster_id})" for a in config.agents) or "no agent"
    agent = config.agents[0] if config.agents else None
    print(BANNER.format(api=config.api_base, model=model, key=key, key_file=args.workdir / "demo-key", agents=agents,
                        console=config.console_url, management_key=management_key, management_file=management_file,
                        agent_name=agent.name if agent else "(none)",
                        console_token=(agent.console_token if agent else "") or "(none)"),
          flush=True)  # fmt: skip
    try:
        while not stop.wait(1.0):
            for name, process in stack.processes.items():
                if not process.alive():
                    print(f"{name} exited; stopping the stack", file=sys.stderr)
                    stop.set()
    finally:
        print("stopping...", flush=True)
        stack.stop()


if __name__ == "__main__":
    main()
