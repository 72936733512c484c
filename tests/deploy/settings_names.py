"""The environment variables each service reads, taken from its settings class: a typo in a manifest's env
is a setting nobody reads, silently."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from services.billing.cli import CliSettings
from services.console.settings import ConsoleSettings
from services.hoster_adapter.settings import AdapterSettings
from services.ingress.settings import IngressSettings
from services.router.settings import RouterSettings
from services.simulator.settings import SimulatorSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "ingress": IngressSettings,
    "router": RouterSettings,
    # The billing container also runs the `computeshare` command, whose settings extend billing's.
    "billing": CliSettings,
    "hoster_adapter": AdapterSettings,
    "simulator": SimulatorSettings,
    "console": ConsoleSettings,
}


def env_names(service: str) -> set[str]:
    """Every ``CS_*`` name the service's settings read (field aliases included)."""
    settings = SETTINGS[service]
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


def unknown_settings(service: str, environment: dict[str, str] | list[str]) -> list[str]:
    """The ``CS_*`` names in ``environment`` that ``service`` does not read."""
    return sorted(name for name in environment if name.startswith("CS_") and name not in env_names(service))
