"""A built-in upstream's environment: the variables that configure it and its default base URL.

Each built-in provider module declares one (`Provider.environment`); settings.py reads them once,
through the registry, so a new vendor's variables come with its file. An upstream declared only
in the config file (`[providers.NAME]`, `api_key_env`) has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callmissed.settings import ProviderSettings

__all__ = ["Environment"]


@dataclass(frozen=True, slots=True)
class Environment:
    base_url: str  # the default
    base_url_env: str | None = None  # the variable that overrides it
    api_key_env: str | None = None  # the variable holding the key the upstream is sent
    required: tuple[str, ...] = ()  # the variables without which it cannot be used
    # Appended to the base URL, each {VARIABLE} replaced by its value (Cloudflare's account id).
    path: str = ""

    def settings(self, name: str, label: str, env: Mapping[str, str]) -> ProviderSettings:
        """The built-in provider `name` as this environment configures it; `missing` names the
        variables still to set, when some are."""
        base = env.get(self.base_url_env, self.base_url) if self.base_url_env else self.base_url
        path = self.path.format_map({variable: env.get(variable, "") for variable in self.required})
        unset = [variable for variable in self.required if not env.get(variable)]
        return ProviderSettings(
            name=name,
            type=name,
            base_url=base.rstrip("/") + path,
            api_key=(env.get(self.api_key_env) or None) if self.api_key_env else None,
            missing=f"{label} is not configured: set {' and '.join(unset)}" if unset else None,
        )
