"""One contract every provider keeps, run over REGISTRY, plus each provider's own quirks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from callmissed.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
)
from callmissed.providers import REGISTRY, Provider
from callmissed.relay import ChatStream, Chunk
from callmissed.settings import EmbeddingSettings, ModelSettings, ProviderSettings, Route

MODEL = ModelSettings(
    name="m", routes=(Route("p", "up-model"),), reasoning="passthrough", max_output=999
)
BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "mystery_field": {"kept": True},
}


@dataclass(frozen=True)
class Dialect:
    """What a provider's upstream speaks, as the contract checks it: where a chat request goes
    (after base_url) and how it carries the key; a whole answer and a stream, each saying
    "Hello" with usage of 5 prompt and 6 output tokens; an in-band error of status 429."""

    path: str
    credential: tuple[str, str]
    answer: dict[str, Any]
    stream: list[bytes]  # each event's data
    error: bytes  # an in-band error event's data
    same_as_openai: bool = True  # unknown fields and stream_options reach the upstream
    embeds: bool = True


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return orjson.dumps({"id": "c1", "model": "up-model", "choices": [choice], **extra})


USAGE = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
OPENAI = Dialect(
    path="/chat/completions",
    credential=("authorization", "Bearer secret-key-123"),
    answer={
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}],
        "usage": USAGE,
    },
    stream=[
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({}, "stop"),
        orjson.dumps({"id": "c1", "choices": [], "usage": USAGE}),
        b"[DONE]",
    ],
    error=orjson.dumps({"error": {"code": 429, "message": "slow down"}, "choices": []}),
)


def _messages_events() -> list[bytes]:
    usage = {"input_tokens": 5, "cache_read_input_tokens": 0, "output_tokens": 1}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "model": "up-model", "usage": usage}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 6},
        },
        {"type": "message_stop"},
    ]
    return [orjson.dumps(event) for event in events]


ANTHROPIC = Dialect(
    path="/v1/messages",
    credential=("x-api-key", "secret-key-123"),
    answer={
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "up-model",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 6},
    },
    stream=_messages_events(),
    error=orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "x"}}),
    same_as_openai=False,
    embeds=False,
)
# Every provider in REGISTRY, and the dialect its upstream speaks: one line per provider.
CONTRACT = {
    "openai": OPENAI,
    "cloudflare": OPENAI,
    "openrouter": OPENAI,
    "sarvam": OPENAI,
    "sim": OPENAI,
    "anthropic": ANTHROPIC,
}


def _provider(kind: str, api_key: str | None = "secret-key-123") -> Provider:
    settings = ProviderSettings(name="p", type=kind, base_url="http://up/v1", api_key=api_key)
    return REGISTRY[kind](settings)


@pytest.fixture(params=sorted(REGISTRY))
def provider(request: pytest.FixtureRequest) -> Provider:
    return _provider(request.param)


def test_every_provider_is_in_the_contract():
    assert set(CONTRACT) == set(REGISTRY)


def test_a_request_goes_to_its_dialects_endpoint_with_the_key(provider):
    dialect = CONTRACT[provider.type]
    built = provider.build_request(dict(BODY), MODEL.routes[0], MODEL)
    body = orjson.loads(built.body)
    assert built.url == "http://up/v1" + dialect.path
    assert (body["model"], built.model) == ("up-model", "up-model")
    name, value = dialect.credential
    assert built.headers[name] == value
    if dialect.same_as_openai:  # within the dialect every field passes through
        assert body["mystery_field"] == {"kept": True}
        assert body["stream_options"] == {"include_usage": True}


def test_build_request_leaves_the_clients_body_alone(provider):
    body = dict(BODY)
    provider.build_request(body, MODEL.routes[0], MODEL)
    assert body == BODY


def test_a_whole_answer_reads_as_a_chat_completion(provider):
    completion = provider.parse_completion(orjson.dumps(CONTRACT[provider.type].answer))
    (choice,) = completion["choices"]
    assert choice["message"]["content"] == "Hello"
    assert (completion["usage"]["prompt_tokens"], completion["usage"]["completion_tokens"]) == (
        5,
        6,
    )


def _streamed(provider: Provider, events: list[bytes]) -> tuple[ChatStream, list[Chunk]]:
    stream = ChatStream(provider, None, include_usage=True)  # type: ignore[arg-type]
    chunks: list[Chunk] = []
    raw = b"".join(b"data: " + data + b"\n\n" for data in events)
    failure = stream._read(raw, chunks)
    if failure is not None:
        raise failure
    return stream, chunks


def test_a_stream_reads_as_chunks_with_usage(provider):
    stream, chunks = _streamed(provider, CONTRACT[provider.type].stream)
    deltas = [c.json()["choices"][0]["delta"] for c in chunks if c.json()["choices"]]
    assert "".join(delta.get("content") or "" for delta in deltas) == "Hello"
    assert stream.finished and stream.complete
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 5
    assert stream.usage["completion_tokens"] == 6


def test_an_in_band_error_is_raised_with_its_status(provider):
    dialect = CONTRACT[provider.type]
    with pytest.raises(UpstreamError) as raised:
        _streamed(provider, [*dialect.stream[:2], dialect.error])
    assert raised.value.http_status == 429


@pytest.mark.parametrize(
    ("status", "kind", "client_status"),
    [
        (400, UpstreamRejected, 400),
        (404, UpstreamRejected, 404),
        (429, UpstreamRejected, 429),
        (401, UpstreamError, 502),
        (500, UpstreamError, 502),
        (503, UpstreamOverloaded, 503),
        (529, UpstreamOverloaded, 503),
        (504, UpstreamTimeout, 504),
    ],
)
def test_error_statuses_map_to_the_error_tree(provider, status, kind, client_status):
    error = provider.parse_error(status, b'{"error": {"message": "nope secret-key-123"}}', None)
    assert type(error) is kind
    assert error.http_status == client_status
    assert "secret-key-123" not in error.message


def test_error_without_a_json_body(provider):
    error = provider.parse_error(502, b"<html>bad gateway</html>", None)
    assert "502" in error.message


def test_in_band_errors_are_found():
    provider = _provider("openai")
    chunk = {"error": {"code": 429, "message": "slow down"}, "choices": []}
    error = provider.stream_error(chunk)
    assert error is not None and error.http_status == 429
    failed = {"choices": [{"index": 0, "finish_reason": "error", "error": {"message": "x"}}]}
    assert provider.stream_error(failed) is not None
    assert provider.stream_error({"choices": [{"finish_reason": "stop"}]}) is None


def test_cloudflare_sends_a_real_max_tokens_and_no_null_content():
    body = {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": []}]}
    built = _provider("cloudflare").build_request(body, MODEL.routes[0], MODEL)
    sent = orjson.loads(built.body)
    assert sent["max_tokens"] == 999
    assert sent["messages"][0]["content"] == ""


@pytest.mark.parametrize(
    "envelope",
    [
        {"result": None, "success": False, "errors": [{"code": 3040, "message": "Capacity"}]},
        {"errors": {"code": 3040, "message": "Capacity"}, "success": False, "result": {}},
    ],
)
def test_cloudflare_envelope_in_both_shapes(envelope):
    error = _provider("cloudflare").parse_error(500, orjson.dumps(envelope), 2.0)
    assert error.http_status == 429
    assert "Workers AI error 3040: Capacity" in error.message
    assert error.retry_after == 2.0


def test_openrouter_attribution_headers():
    headers = _provider("openrouter").build_request(dict(BODY), MODEL.routes[0], MODEL).headers
    assert headers["x-title"] == "CallMissed"
    assert "http-referer" in headers


def test_no_key_no_authorization_header():
    built = _provider("openai", api_key=None).build_request(dict(BODY), MODEL.routes[0], MODEL)
    assert "authorization" not in built.headers


# Embeddings: every provider builds one batch's request and reads the answer into vectors.

EMBED_MODEL = ModelSettings(
    name="e",
    routes=(Route("p", "up-embed"),),
    reasoning="passthrough",
    embedding=EmbeddingSettings(dimensions=4),
)
EMBED_BODY = {"model": "e", "input": ["a", "b", "c"], "encoding_format": "base64", "x": 1}


@pytest.fixture(params=sorted(kind for kind in REGISTRY if CONTRACT[kind].embeds))
def embedder(request: pytest.FixtureRequest) -> Provider:
    return _provider(request.param)


def test_an_embedding_batch_request_carries_the_batch_and_the_upstream_model(embedder):
    built = embedder.build_embedding_request(
        dict(EMBED_BODY), ["b", "c"], EMBED_MODEL.routes[0], EMBED_MODEL
    )
    body = orjson.loads(built.body)
    assert built.model == "up-embed"
    assert built.headers["authorization"] == "Bearer secret-key-123"
    if embedder.type == "cloudflare":
        assert built.url == "http://up/run/up-embed"  # the native API: base_url less its /v1
        assert body == {"text": ["b", "c"]}
    else:
        assert built.url == "http://up/v1/embeddings"
        assert body["input"] == ["b", "c"]
        assert (body["model"], body["x"], body["encoding_format"]) == ("up-embed", 1, "base64")


def test_building_an_embedding_request_leaves_the_clients_body_alone(embedder):
    body = dict(EMBED_BODY)
    embedder.build_embedding_request(body, ["a"], EMBED_MODEL.routes[0], EMBED_MODEL)
    assert body == EMBED_BODY


def test_an_embeddings_answer_is_read_in_input_order(embedder):
    if embedder.type == "cloudflare":
        answer = {"result": {"shape": [2, 2], "data": [[1, 0], [0, 1]]}, "success": True}
    else:
        data = [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]
        answer = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 3}}
    batch = embedder.parse_embeddings(orjson.dumps(answer))
    assert batch.vectors == [[1, 0], [0, 1]]
    assert batch.prompt_tokens == (None if embedder.type == "cloudflare" else 3)


@pytest.mark.parametrize("answer", [b"[]", b"not json", b'{"error": {"message": "nope"}}'])
def test_an_embeddings_answer_without_vectors_is_an_upstream_error(embedder, answer):
    with pytest.raises(UpstreamError):
        embedder.parse_embeddings(answer)


def test_cloudflare_embeds_text_only_and_keeps_its_native_options():
    cloudflare = _provider("cloudflare")
    route = EMBED_MODEL.routes[0]
    with pytest.raises(InvalidRequest):
        cloudflare.build_embedding_request({"model": "e"}, [[1, 2]], route, EMBED_MODEL)
    with pytest.raises(InvalidRequest):
        cloudflare.build_embedding_request({"dimensions": 2}, ["a"], route, EMBED_MODEL)
    body = {"model": "e", "pooling": "cls", "truncate_inputs": True, "user": "u"}
    built = cloudflare.build_embedding_request(body, ["a"], route, EMBED_MODEL)
    assert orjson.loads(built.body) == {"text": ["a"], "pooling": "cls", "truncate_inputs": True}


def test_cloudflare_reads_a_failed_envelope_as_an_upstream_error():
    envelope = {"result": None, "success": False, "errors": [{"code": 5006, "message": "bad"}]}
    with pytest.raises(UpstreamError, match="Workers AI error 5006: bad"):
        _provider("cloudflare").parse_embeddings(orjson.dumps(envelope))


def test_the_simulator_is_told_its_models_vector_length():
    built = _provider("sim").build_embedding_request(
        {"model": "e"}, ["a"], EMBED_MODEL.routes[0], EMBED_MODEL
    )
    assert orjson.loads(built.body)["dimensions"] == 4


def test_batch_limits_are_data_per_provider():
    assert {kind: REGISTRY[kind].embedding_batch for kind in REGISTRY if CONTRACT[kind].embeds} == {
        "cloudflare": 100,
        "openai": 2048,
        "openrouter": 2048,
        "sarvam": 2048,
        "sim": 2048,
    }
