"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI itself): the base dialect as-is."""

from __future__ import annotations

from callmissed.providers.base import Provider

__all__ = ["OpenAICompatible"]


class OpenAICompatible(Provider):
    type = "openai"
    label = "OpenAI-compatible upstream"
