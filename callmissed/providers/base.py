"""The provider contract: how a request reaches one upstream API and how its answers read.

A provider owns its upstream's dialect end to end, as pure translation: it builds the upstream
request from the gateway's OpenAI-format chat body (or one batch of embeddings inputs), parses
a whole answer into a chat.completion (parse_completion), picks how a stream is read
(stream_translator: None means the upstream streams OpenAI chunks, which relay.py forwards on its
fast path; otherwise one translator per stream turns its events into chunks), and reads its error
bodies. It performs no I/O; callmissed/upstream/ does all outbound HTTP.
The base class speaks the OpenAI-compatible dialect most upstreams share; a provider module
overrides only what its upstream does differently (providers/anthropic.py: all of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import orjson

from callmissed import failures
from callmissed.errors import InvalidRequest, UpstreamError
from callmissed.formats.embeddings import EmbeddingBatch
from callmissed.formats.openai import normalise_completion
from callmissed.jsonbytes import kept_dumps
from callmissed.nesting import MAX_DEPTH, too_deep
from callmissed.providers.environment import Environment
from callmissed.settings import ModelSettings, ProviderSettings, Route

__all__ = ["Provider", "StreamTranslator", "UpstreamRequest", "encode_body"]


def encode_body(body: dict[str, Any]) -> bytes:
    """An upstream request's body as JSON. The client's body was checked to nest no deeper
    than orjson encodes (nesting.py), but a translation may put a part a level deeper (an
    Anthropic input_schema, a Responses tool's parameters: a chat tool's function.parameters):
    that is still the client's JSON nesting too deep, a 400."""
    try:
        return kept_dumps(body)  # kept until the stream ends, for failover
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


class StreamTranslator(Protocol):
    """One upstream stream in another dialect, read as OpenAI chat.completion chunks: fed each
    event's parsed data in order (relay.ChatStream does the reading and the JSON checks)."""

    done: bool  # the upstream ended the stream as its dialect should (OpenAI's [DONE])

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event makes (often none); the UpstreamError an error event reports."""
        ...


class Provider:
    """An OpenAI-compatible upstream: vLLM, Ollama, llama.cpp, OpenAI itself, ..."""

    type: ClassVar[str] = "openai"
    label: ClassVar[str] = "OpenAI-compatible upstream"
    # How callmissed/upstream/ reaches it: "http" (HTTP/1.1 or HTTP/2, as its settings say) or
    # "simulator": answered in-process, with no socket, so nothing to probe (doctor.py) and no
    # one to bill (pricing.py); and every model id under "{type}/" is in the catalog, so an
    # unknown one is not found rather than sent on (routing.py).
    transport: ClassVar[Literal["http", "simulator"]] = "http"
    serves_responses: ClassVar[bool] = False  # also POST /responses (relay_responses.py)
    serves_messages: ClassVar[bool] = False  # Anthropic's POST /v1/messages (relay_messages.py)
    # The most inputs one upstream embeddings request may carry: OpenAI's own limit. A model's
    # `embedding.batch` in the catalog says less where its upstream accepts less.
    embedding_batch: ClassVar[int] = 2048
    # Its usage objects carry `cost`, what it billed in USD (OpenRouter's): settle from that.
    reports_cost: ClassVar[bool] = False
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
            self._headers.update(self.credential_headers(settings.api_key))

    def extra_headers(self) -> dict[str, str]:
        return {}

    def credential_headers(self, api_key: str) -> dict[str, str]:
        """How the upstream takes our key."""
        return {"authorization": f"Bearer {api_key}"}

    @property
    def described(self) -> str:
        """The upstream as messages name it: its label and its configured name."""
        return f"{self.label} ({self.name})"

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

    def parse_completion(self, body: bytes) -> dict[str, Any]:
        """A whole answer's bytes as a normalised chat.completion; UpstreamError if it is not one
        (malformed, nested too deep, or an error in disguise)."""
        completion = self.load_answer(body)
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            error = self.stream_error(completion) if isinstance(completion, dict) else None
            raise error or self.malformed("answered without choices")
        error = self.stream_error(completion)
        if error is not None:
            raise error
        normalise_completion(completion)
        return completion

    def load_answer(self, body: bytes) -> Any:
        """A whole answer's JSON; UpstreamError if it is malformed or nests too deep."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise self.malformed("answered with malformed JSON") from None
        if too_deep(answer, len(body)):
            raise self.malformed(f"answered with JSON nested deeper than {MAX_DEPTH} levels")
        return answer

    def stream_translator(self) -> StreamTranslator | None:
        """How one stream is read: None, as OpenAI chunks (relay.py's fast path)."""
        return None

    def build_messages_request(
        self, body: dict[str, Any], route: Route, model: ModelSettings, beta: str | None = None
    ) -> UpstreamRequest:
        """An Anthropic Messages body passed through, for a provider that serves_messages, with
        the client's `anthropic-beta` header (`beta`)."""
        raise NotImplementedError(f"{self.described} does not serve the Messages API")

    def parse_message(self, body: bytes) -> dict[str, Any]:
        """A whole Messages answer, for a provider that serves_messages."""
        raise NotImplementedError(f"{self.described} does not serve the Messages API")

    def event_error(self, event: dict[str, Any]) -> UpstreamError:
        """The UpstreamError an `error` event in a stream of typed events reports."""
        message = self.error_message(event) or "the upstream failed while generating"
        return self.make_error(502, message, None)

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

    def malformed(self, what: str) -> UpstreamError:
        """The failure table's "malformed" error: this upstream `what` (sent or answered
        something that is not the SSE or JSON it should be)."""
        return failures.failure(failures.MALFORMED, f"{self.described} {what}", provider=self.name)

    def _scrub(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "[redacted]") if key else text


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
