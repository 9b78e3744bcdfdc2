"""Model name -> the catalog entry and its ordered, usable upstream targets. Pure lookups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callmissed.errors import ModelNotFound, ProviderNotConfigured
from callmissed.providers import Provider
from callmissed.settings import ModelSettings, Route, Settings

__all__ = ["Router", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    provider: Provider
    route: Route


class Router:
    def __init__(self, settings: Settings, providers: Mapping[str, Provider]) -> None:
        self._models = settings.models
        self._providers = providers
        self._resolved: dict[str, tuple[ModelSettings, list[Target]]] = {}  # catalog models
        # Where a vendor/model id outside the catalog goes (Provider.accepts_any_model), and the
        # prefixes of ids that are all in the catalog (in-process ones: Provider.transport).
        self._any_model = next(
            (name for name, provider in providers.items() if provider.accepts_any_model), None
        )
        self._catalog_only = tuple(
            f"{provider.type}/"
            for provider in providers.values()
            if provider.transport == "simulator"
        )

    def resolve(self, name: str) -> tuple[ModelSettings, list[Target]]:
        """The model and its configured targets, in order (a shared list: do not change it);
        raise if there are none."""
        resolved = self._resolved.get(name)
        if resolved is not None:
            return resolved
        model = self.model(name)
        targets = [
            Target(self._providers[route.provider], route)
            for route in model.routes
            if not self._providers[route.provider].settings.missing
        ]
        if not targets:
            reason = self._providers[model.routes[0].provider].settings.missing
            raise ProviderNotConfigured(f"Model {name!r} is unavailable: {reason}.", param="model")
        if name in self._models:  # not any vendor/model sent on: their number is unbounded
            self._resolved[name] = (model, targets)
        return model, targets

    def model(self, name: str) -> ModelSettings:
        model = self._models.get(name)
        if model is not None:
            return model
        # Any vendor/model id outside the catalog goes as-is to a provider that serves any.
        if "/" in name and self._any_model and not name.startswith(self._catalog_only):
            return ModelSettings(
                name=name, routes=(Route(self._any_model, name),), reasoning="passthrough"
            )
        raise ModelNotFound(
            f"The model {name!r} does not exist. GET /v1/models lists the models you can use.",
            param="model",
        )

    def unavailable_reason(self, model: ModelSettings) -> str | None:
        reasons = [self._providers[route.provider].settings.missing for route in model.routes]
        return None if any(reason is None for reason in reasons) else reasons[0]
