"""Upstream providers, one module each. REGISTRY is the one place they are listed."""

from __future__ import annotations

from collections.abc import Mapping

from callmissed.providers.anthropic import Anthropic
from callmissed.providers.base import Provider, StreamTranslator, UpstreamRequest
from callmissed.providers.cloudflare import Cloudflare
from callmissed.providers.openai import OpenAICompatible
from callmissed.providers.openrouter import OpenRouter
from callmissed.providers.sarvam import Sarvam
from callmissed.providers.sim import Simulator
from callmissed.settings import ProviderSettings

__all__ = ["REGISTRY", "Provider", "StreamTranslator", "UpstreamRequest", "builtin_providers"]

REGISTRY: dict[str, type[Provider]] = {
    provider.type: provider
    for provider in (OpenAICompatible, Cloudflare, OpenRouter, Sarvam, Simulator, Anthropic)
}


def builtin_providers(env: Mapping[str, str]) -> dict[str, ProviderSettings]:
    """Every built-in upstream, configured by the variables its module declares."""
    return {
        provider.type: provider.environment.settings(provider.type, provider.label, env)
        for provider in REGISTRY.values()
        if provider.environment is not None
    }
