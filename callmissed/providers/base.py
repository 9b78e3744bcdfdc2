"""The provider contract: how a request reaches one upstream API and how its failures read.

A provider is pure translation: it builds the upstream request (chat, or one batch of embeddings
inputs) and turns upstream answers and errors into ours. It performs no I/O;
callmissed/upstream/ does all outbound HTTP.
The base class speaks the OpenAI-compatible dialect every current upstream shares; a provider
module overrides only what its upstream does differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson

from callmissed import failures
from callmissed.errors import InvalidRequest, UpstreamError
from callmissed.formats.embeddings import EmbeddingBatch
from callmissed.nesting import MAX_DEPTH
from callmissed.providers.environment import Environment
from callmissed.settings import ModelSettings, ProviderSettings, Route

__all__ = ["Provider", "UpstreamRequest", "encode_body"]


def encode_body(body: dict[str, Any]) -> bytes:
    """An upstream request's body as JSON. The client's body was checked to nest no deeper
    than orjson encodes (nesting.py), but a translation may put a part a level deeper (an
    Anthropic input_schema, a Responses tool's parameters: a chat tool's function.parameters):
    that is still the client's JSON nesting too deep, a 400."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequest(
            f"The request body nests JSON deeper than {MAX_DEPTH} levels once translated for "
            "the upstream (a tool's schema sits a level deeper there)."
        ) from None


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    model: str  # the upstream's model id, as in the body


class Provider:
    """An OpenAI-compatible upstream: vLLM, Ollama, llama.cpp, OpenAI itself, ..."""

    type: ClassVar[str] = "openai"
    label: ClassVar[str] = "OpenAI-compatible upstream"
    # How callmissed/upstream/ reaches it: "http" (HTTP/1.1 or HTTP/2, as its settings say) or
    # "simulator" (answered in-process).
    transport: ClassVar[Literal["http", "simulator"]] = "http"
    serves_responses: ClassVar[bool] = False  # also POST /responses (relay_responses.py)
    # The most inputs one upstream embeddings request may carry: OpenAI's own limit. A model's
    # `embedding.batch` in the catalog says less where its upstream accepts less.
    embedding_batch: ClassVar[int] = 2048
    # Its usage objects carry `cost`, what it billed in USD (OpenRouter's): settle from that.
    reports_cost: ClassVar[bool] = False
    # Answered in-process, with no socket (the simulator): nothing to probe; and every model id
    # under "{type}/" is in the catalog, so an unknown one is not found rather than sent on.
    is_local: ClassVar[bool] = False
    # Serves any "vendor/model" id as-is (OpenRouter): where a name outside the catalog goes.
    accepts_any_model: ClassVar[bool] = False
    # Built in: its variables and default URL (environment.py). None: declared in the config file.
    environment: ClassVar[Environment | None] = None

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._url = f"{settings.base_url}/chat/completions"
        self._embeddings_url = f"{settings.base_url}/embeddings"
        self._headers = {"content-type": "application/json", **self.extra_headers()}
        self._headers.update(settings.headers)
        if settings.api_key:
            self._headers["authorization"] = f"Bearer {settings.api_key}"

    def extra_headers(self) -> dict[str, str]:
        return {}

    def build_request(
        self, body: dict[str, Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        """The client's body with only the edits this route needs. `body` is not modified."""
        body = {**body, "model": route.upstream_model}
        if body.get("stream"):
            # Always ask for usage so we can account for it; the relay strips it again
            # when the client did not ask.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        self.adapt_body(body, model)
        return UpstreamRequest(self._url, self._headers, encode_body(body), route.upstream_model)

    def build_responses_request(
        self, body: dict[str, Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        """A Responses API body, for an upstream that serves_responses: the client's with the
        upstream model id, and the effort the reasoning matrix chose back in `reasoning`."""
        body = {**body, "model": route.upstream_model}
        if "reasoning_effort" in body:
            effort = body.pop("reasoning_effort")
            body["reasoning"] = {**(body.get("reasoning") or {}), "effort": effort}
        url = f"{self.settings.base_url}/responses"
        return UpstreamRequest(url, self._headers, encode_body(body), route.upstream_model)

    def build_get(self, path: str) -> UpstreamRequest:
        """A GET of `{base_url}/{path}` (its model list, say) with this upstream's credentials."""
        headers = {name: value for name, value in self._headers.items() if name != "content-type"}
        return UpstreamRequest(f"{self.settings.base_url}/{path}", headers, b"", "")

    def adapt_body(self, body: dict[str, Any], model: ModelSettings) -> None:
        """Upstream-specific edits, in place. The base dialect needs none."""

    def build_embedding_request(
        self, body: dict[str, Any], inputs: list[Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        """One batch of the client's embeddings body: its `inputs`, this route's model id, every
        other field as the client sent it. `body` is not modified."""
        body = {**body, "model": route.upstream_model, "input": inputs}
        return UpstreamRequest(
            self._embeddings_url, self._headers, encode_body(body), route.upstream_model
        )

    def parse_embeddings(self, body: bytes) -> EmbeddingBatch:
        """The vectors of an OpenAI-format embeddings answer, in input order (by `index`)."""
        payload = _loads(body)
        if not isinstance(payload, dict):
            raise self.make_error(502, "the embeddings answer is not a JSON object", None)
        error = self.stream_error(payload)
        if error is not None:
            raise error
        data = payload.pop("data", None)
        if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("index", 0), int) for item in data
        ):
            raise self.make_error(502, "the embeddings answer has no list of embeddings", None)
        data.sort(key=lambda item: item.get("index", 0))
        usage = payload.pop("usage", None)
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return EmbeddingBatch(
            [item.get("embedding") for item in data],
            prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
            payload,
        )

    def parse_error(self, status: int, body: bytes, retry_after: float | None) -> UpstreamError:
        """Turn an upstream error response into the right UpstreamError."""
        payload = _loads(body)
        message = self.error_message(payload) or f"HTTP {status} with no error message"
        status = self.error_status(status, payload)
        return self.make_error(status, message, retry_after, self.error_kind(payload))

    def error_status(self, status: int, payload: Any) -> int:
        """The status the failure really means; some upstreams say more in the body."""
        return status

    def error_kind(self, payload: Any) -> str | None:
        """A row of the failure table (callmissed/failures.py) an error body names beyond its
        status, such as an account refused the model; None: its status decides."""
        return None

    def error_message(self, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return None
        error = payload.get("error", payload.get("detail"))
        if isinstance(error, dict):
            message = error.get("message")
            return str(message) if message is not None else None
        return str(error) if error is not None else None

    def stream_error(self, chunk: dict[str, Any]) -> UpstreamError | None:
        """An error reported inside a 200 response (a chunk or the whole body), if any."""
        error = chunk.get("error")
        if error:
            message = self.error_message(chunk) or "the upstream reported an error"
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and 400 <= code < 600 else 502
            return self.make_error(status, message, None)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason") == "error":
                message = self.error_message(choice) or "the upstream failed while generating"
                return self.make_error(502, message, None)
        return None

    def make_error(
        self, status: int, message: str, retry_after: float | None, kind: str | None = None
    ) -> UpstreamError:
        """The error for an upstream's failure `status` (or its own `kind` of failure, a row of
        callmissed/failures.py): which class, and what follows it, is that table's."""
        label = f"{self.label} ({self.name})"
        if status == 401:
            text = f"{label} rejected CallMissed's credentials: check its API key."
        else:
            text = f"{label} answered {status}: {self._scrub(message)[:500]}"
        if kind is not None:
            return failures.failure(kind, text, provider=self.name, retry_after=retry_after)
        return failures.from_status(status, text, provider=self.name, retry_after=retry_after)

    def _scrub(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "[redacted]") if key else text


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
