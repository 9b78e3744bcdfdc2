"""OpenRouter: OpenAI-compatible, plus attribution headers and its own error habits.

OpenRouter reports errors as `{"error": {"code": <number>, "message", "metadata"}}`; mid-stream
as a chunk with a top-level `error`, and non-stream failures as HTTP 200 with
`choices[].finish_reason == "error"`
(https://openrouter.ai/docs/api/reference/errors-and-debugging). The base class already checks
both; `: OPENROUTER PROCESSING` keep-alive comments are skipped by the SSE decoder. It serves the
Responses API too, so POST /v1/responses passes through to it (relay_responses.py). Its usage
objects carry `cost`, what it billed in USD, which settlement uses (docs/credits.md); its model
list (`GET /models`) prices every model it serves (accounting/price_list.py).
"""

from __future__ import annotations

from callmissed.providers.base import Provider
from callmissed.providers.environment import Environment

__all__ = ["OpenRouter"]


class OpenRouter(Provider):
    type = "openrouter"
    label = "OpenRouter"
    serves_responses = (
        True  # POST /api/v1/responses (https://openrouter.ai/docs/api/reference/responses/overview)
    )
    reports_cost = True
    accepts_any_model = True  # its catalog is every vendor's (GET /models)
    environment = Environment(
        "https://openrouter.ai/api/v1",
        base_url_env="OPENROUTER_BASE_URL",
        api_key_env="OPENROUTER_API_KEY",
        required=("OPENROUTER_API_KEY",),
    )

    def extra_headers(self) -> dict[str, str]:
        return {"http-referer": "https://github.com/callmissed/callmissed", "x-title": "CallMissed"}
