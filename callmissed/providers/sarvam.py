"""Sarvam AI (sarvam-30b, sarvam-105b): OpenAI-compatible at https://api.sarvam.ai/v1.

Sarvam takes the key as `Authorization: Bearer` for OpenAI-compatible tooling and streams its
thinking as `reasoning_content`, which the relay renames like any other upstream's.
"""

from __future__ import annotations

from callmissed.providers.base import Provider
from callmissed.providers.environment import Environment

__all__ = ["Sarvam"]


class Sarvam(Provider):
    type = "sarvam"
    label = "Sarvam AI"
    environment = Environment(
        "https://api.sarvam.ai/v1",
        base_url_env="SARVAM_BASE_URL",
        api_key_env="SARVAM_API_KEY",
        required=("SARVAM_API_KEY",),
    )
