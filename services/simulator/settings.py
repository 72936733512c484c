"""Settings of the simulator: which models it serves, how fast it answers and which faults it injects."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings
from services.simulator.chat_request import Fault
from services.simulator.service import Behaviour


class SimulatorSettings(ServiceSettings):
    """``CS_SIMULATOR_*``: ``CS_SIMULATOR_MODELS`` is a JSON list; every request may override the timing."""

    model_config = SettingsConfigDict(env_prefix="CS_SIMULATOR_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    models: list[str] = Field(default_factory=lambda: ["demo-model", "demo-embedding"], min_length=1)
    ttft_ms: float = Field(0, ge=0)
    # 0 sends all tokens back to back: the fastest upstream, for throughput benchmarks of the gateway.
    tokens_per_second: float = Field(0, ge=0)
    reply_tokens: int = Field(16, ge=0)
    fault: Fault = "none"
    fault_rate: float = Field(0.0, ge=0, le=1)
    fault_status: int = Field(500, ge=400, le=599)
    fault_after_tokens: int = Field(0, ge=0)
    # The hostile faults: bytes of an endless line or a huge error body (0: for ever), choices of many_choices.
    fault_bytes: int = Field(0, ge=0)
    fault_choices: int = Field(1000, ge=1)
    # Optional: a local simulator usually runs open; set it to test the gateway's upstream authentication.
    api_key: str | None = None

    def behaviour(self) -> Behaviour:
        """The configured behaviour, fault included, before the fault rate and per-request overrides apply."""
        return Behaviour(
            reply_tokens=self.reply_tokens,
            ttft_ms=self.ttft_ms,
            tokens_per_second=self.tokens_per_second,
            fault=self.fault,
            fault_status=self.fault_status,
            fault_after_tokens=self.fault_after_tokens,
            fault_bytes=self.fault_bytes,
            fault_choices=self.fault_choices,
        )
