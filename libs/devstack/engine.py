"""A real inference engine as a stack process: llama-cpp-python's OpenAI-compatible server on the CPU, serving
the tiny models of ``libs.devstack.tinymodel``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from libs.devstack.processes import ManagedProcess, wait_for_http
from libs.devstack.tinymodel import TinyModel

# Loading a 2 MB model takes well under a second; the server's own imports (FastAPI, numpy, the shared
# library) take a few on a loaded two-core machine.
ENGINE_READY_TIMEOUT_S = 60.0


@dataclass
class LlamaCppSpec:
    """One llama-cpp-python server process serving ``models`` (network name -> model) on ``port``.

    ``threads`` is llama.cpp's thread count: 1 keeps a test machine's other processes responsive."""

    name: str
    port: int
    models: dict[str, TinyModel]
    context_length: int = 2048
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Its OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"


def server_config(spec: LlamaCppSpec) -> dict[str, object]:
    """The server's config file (``--config_file``): one entry per model, each served under its alias.

    ``chat_template.default`` is the template embedded in the GGUF (llama-cpp-python would guess it too, but
    only when the template matches none it knows). Requests queue rather than interrupt each other: by default
    a new request aborts the one streaming (``interrupt_requests``), which no hoster behind a gateway wants.
    """
    return {
        "host": "127.0.0.1",
        "port": spec.port,
        "interrupt_requests": False,
        "models": [
            {
                "model": str(model.gguf),
                "model_alias": alias,
                "chat_format": "chat_template.default",
                "n_ctx": spec.context_length,
                "n_threads": spec.threads,
                "n_threads_batch": spec.threads,
                "verbose": False,
            }
            for alias, model in spec.models.items()
        ],
    }


def start_llamacpp(
    spec: LlamaCppSpec, workdir: Path, env: dict[str, str], log_path: Path | None = None
) -> ManagedProcess:
    """Start the server (its config file written into ``workdir``) and wait until ``/v1/models`` answers."""
    config = workdir / f"{spec.name}.llamacpp.json"
    config.write_text(json.dumps(server_config(spec), indent=2))
    process = ManagedProcess(
        spec.name,
        [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
        env={**env, **spec.env},
        log_path=log_path,
    ).start()
    try:
        wait_for_http(f"{spec.base_url}/models", ENGINE_READY_TIMEOUT_S, process)
    except BaseException:
        process.stop()  # never left running unowned: the caller gets no handle on a failed start
        raise
    return process
