"""One contract every provider keeps, run over REGISTRY, plus each provider's own quirks."""

from __future__ import annotations

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


def _provider(kind: str, api_key: str | None = "secret-key-123") -> Provider:
    settings = ProviderSettings(name="p", type=kind, base_url="http://up/v1", api_key=api_key)
    return REGISTRY[kind](settings)


@pytest.fixture(params=sorted(REGISTRY))
def provider(request: pytest.FixtureRequest) -> Provider:
    return _provider(request.param)


def test_request_keeps_every_field_and_asks_for_usage(provider):
    built = provider.build_request(dict(BODY), MODEL.routes[0], MODEL)
    body = orjson.loads(built.body)
    assert built.url == "http://up/v1/chat/completions"
    assert body["model"] == "up-model"
    assert body["mystery_field"] == {"kept": True}
    assert body["stream_options"] == {"include_usage": True}
    assert built.headers["authorization"] == "Bearer secret-key-123"


def test_build_request_leaves_the_clients_body_alone(provider):
    body = dict(BODY)
    provider.build_request(body, MODEL.routes[0], MODEL)
    assert body == BODY


@pytest.mark.parametrize(
    ("status", "kind", "client_status"),
    [
        (400, UpstreamRejected, 400),
        (404, UpstreamRejected, 404),
        (429, UpstreamRejected, 429),
        (401, UpstreamError, 502),
        (500, UpstreamError, 502),
        (503, UpstreamOverloaded, 503),
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


def test_in_band_errors_are_found(provider):
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


def test_an_embedding_batch_request_carries_the_batch_and_the_upstream_model(provider):
    built = provider.build_embedding_request(
        dict(EMBED_BODY), ["b", "c"], EMBED_MODEL.routes[0], EMBED_MODEL
    )
    body = orjson.loads(built.body)
    assert built.model == "up-embed"
    assert built.headers["authorization"] == "Bearer secret-key-123"
    if provider.type == "cloudflare":
        assert built.url == "http://up/run/up-embed"  # the native API: base_url less its /v1
        assert body == {"text": ["b", "c"]}
    else:
        assert built.url == "http://up/v1/embeddings"
        assert body["input"] == ["b", "c"]
        assert (body["model"], body["x"], body["encoding_format"]) == ("up-embed", 1, "base64")


def test_building_an_embedding_request_leaves_the_clients_body_alone(provider):
    body = dict(EMBED_BODY)
    provider.build_embedding_request(body, ["a"], EMBED_MODEL.routes[0], EMBED_MODEL)
    assert body == EMBED_BODY


def test_an_embeddings_answer_is_read_in_input_order(provider):
    if provider.type == "cloudflare":
        answer = {"result": {"shape": [2, 2], "data": [[1, 0], [0, 1]]}, "success": True}
    else:
        data = [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]
        answer = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 3}}
    batch = provider.parse_embeddings(orjson.dumps(answer))
    assert batch.vectors == [[1, 0], [0, 1]]
    assert batch.prompt_tokens == (None if provider.type == "cloudflare" else 3)


@pytest.mark.parametrize("answer", [b"[]", b"not json", b'{"error": {"message": "nope"}}'])
def test_an_embeddings_answer_without_vectors_is_an_upstream_error(provider, answer):
    with pytest.raises(UpstreamError):
        provider.parse_embeddings(answer)


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
    assert {kind: REGISTRY[kind].embedding_batch for kind in REGISTRY} == {
        "cloudflare": 100,
        "openai": 2048,
        "openrouter": 2048,
        "sarvam": 2048,
        "sim": 2048,
    }
