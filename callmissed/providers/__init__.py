"""Upstream providers, one module each. REGISTRY is the one place they are listed."""

from __future__ import annotations

from callmissed.providers.anthropic import Anthropic
from callmissed.providers.base import Provider, StreamTranslator, UpstreamRequest
from callmissed.providers.cloudflare import Cloudflare
from callmissed.providers.openai import OpenAICompatible
from callmissed.providers.openrouter import OpenRouter
from callmissed.providers.sarvam import Sarvam
from callmissed.providers.sim import Simulator

__all__ = ["REGISTRY", "Provider", "StreamTranslator", "UpstreamRequest"]

REGISTRY: dict[str, type[Provider]] = {
    provider.type: provider
    for provider in (OpenAICompatible, Cloudflare, OpenRouter, Sarvam, Simulator, Anthropic)
}
