"""Cloudflare Workers AI: chat through `/ai/v1/chat/completions`, embeddings through `/ai/run`.

What differs from the base dialect (docs/providers.md):
- a missing `max_tokens` means 256 upstream, so we always send the model's real output cap;
- `content: null` on a message fails Workers AI's schema check, so it becomes "";
- errors come in Cloudflare's v4 envelope (`errors` as a list or an object) with internal codes;
- embeddings use each model's native `/ai/run/{model}` API, `{"text": [...]}` in and
  `{"result": {"shape", "data"}}` out, whose per-model schema is published for every embedding
  model (at most 100 texts a request; qwen3-embedding 32), unlike `/ai/v1/embeddings`
  (docs/embeddings.md says why). It takes text only, reports no token counts and has no
  `dimensions`: the gateway estimates the tokens and shortens vectors itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from callmissed import failures
from callmissed.errors import InvalidRequest
from callmissed.formats.embeddings import EmbeddingBatch
from callmissed.providers.base import Provider, UpstreamRequest, encode_body
from callmissed.providers.environment import Environment
from callmissed.settings import ModelSettings, ProviderSettings, Route

__all__ = ["Cloudflare"]

DEFAULT_MAX_TOKENS = 4096

# Workers AI internal error codes and the HTTP status each means (Cloudflare's errors page).
ERROR_STATUS = {
    3003: 400,
    5004: 400,
    5006: 400,
    5007: 404,
    8001: 400,
    8006: 400,
    3023: 403,
    3041: 403,
    5016: 403,
    5018: 403,
    5035: 403,
    3042: 404,
    3007: 408,
    3008: 408,
    3006: 413,
    3036: 429,
    3040: 429,
    7009: 503,
}
# 403s about our account rather than the request (blocked, private model, agreement, Workers
# Paid only): the failure table's "account" row (callmissed/failures.py), which another route
# may well serve. Capacity (3040), the daily allocation (3036) and 7009 go by their statuses.
ACCOUNT_CODES = frozenset({3023, 3041, 5016, 5018, 5035})
# Native embedding options a client may send (as extra_body) that reach /ai/run as they are.
EMBEDDING_OPTIONS = ("truncate_inputs", "pooling")


class Cloudflare(Provider):
    type = "cloudflare"
    label = "Cloudflare Workers AI"
    environment = Environment(
        "https://api.cloudflare.com/client/v4",
        base_url_env="CLOUDFLARE_BASE_URL",
        api_key_env="CLOUDFLARE_API_TOKEN",
        required=("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"),
        path="/accounts/{CLOUDFLARE_ACCOUNT_ID}/ai/v1",
    )
    embedding_batch = 100  # the `text` array's maxItems in every embedding model's schema

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        # base_url is the account's .../ai/v1; the native API is .../ai/run/{model}
        self._run_url = f"{settings.base_url.removesuffix('/v1')}/run/"

    def build_embedding_request(
        self, body: dict[str, Any], inputs: list[Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        if inputs and not isinstance(inputs[0], str):
            raise InvalidRequest(
                f"{model.name} on Workers AI embeds text only: send strings, not token arrays.",
                param="input",
            )
        if body.get("dimensions") is not None:
            raise InvalidRequest(
                f"Workers AI cannot shorten {model.name}'s vectors ('dimensions'): leave it out, "
                "or give the model embedding.dimensions and shorten = true in the config file.",
                param="dimensions",
            )
        native: dict[str, Any] = {"text": inputs}
        native.update((key, body[key]) for key in EMBEDDING_OPTIONS if key in body)
        url = self._run_url + route.upstream_model
        return UpstreamRequest(url, self._headers, encode_body(native), route.upstream_model)

    def parse_embeddings(self, body: bytes) -> EmbeddingBatch:
        """`{"result": {"shape": [n, d], "data": [[...], ...]}, "success": true, ...}`."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        result = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(result, dict) or payload.get("success") is False:
            message = self.error_message(payload) or "the answer has no embeddings result"
            raise self.make_error(502, message, None)
        data = result.get("data")
        if not isinstance(data, list):
            raise self.make_error(502, "the embeddings result has no data", None)
        usage = result.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return EmbeddingBatch(data, prompt if isinstance(prompt, int) else None)

    def adapt_body(self, body: dict[str, Any], model: ModelSettings) -> None:
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = model.max_output or DEFAULT_MAX_TOKENS
        messages = body.get("messages")
        if isinstance(messages, list) and any(_has_null_content(m) for m in messages):
            body["messages"] = [_with_empty_content(message) for message in messages]

    def error_kind(self, payload: Any) -> str | None:
        first = _first_envelope_error(payload)
        account = first is not None and first.get("code") in ACCOUNT_CODES
        return failures.ACCOUNT if account else None

    def error_status(self, status: int, payload: Any) -> int:
        first = _first_envelope_error(payload)
        code = first.get("code") if first else None
        return ERROR_STATUS.get(code, status) if isinstance(code, int) else status

    def error_message(self, payload: Any) -> str | None:
        first = _first_envelope_error(payload)
        if first is None:
            return super().error_message(payload)
        code, message = first.get("code"), first.get("message", "unknown error")
        return f"Workers AI error {code}: {message}" if code is not None else str(message)


def _has_null_content(message: Any) -> bool:
    return isinstance(message, dict) and "content" in message and message["content"] is None


def _with_empty_content(message: Any) -> Any:
    return {**message, "content": ""} if _has_null_content(message) else message


def _first_envelope_error(payload: Any) -> dict[str, Any] | None:
    if not isinstance(payload, dict) or "success" not in payload:
        return None
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return errors[0]
    if isinstance(errors, dict):
        return errors
    return None
