"""POST /v1/embeddings, driven by the official openai SDK against every kind of upstream."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from callmissed.upstream.simulator import embed
from tests.accounting import new_key, query, settle
from tests.api.embedding_gateway import embedding_gateway, shortened, unit
from tests.fakes.embeddings import fake_vector
from tests.fakes.upstream import Received

__all__ = ["embedding_gateway"]  # the fixture, used by name

TEXTS = ["The quick brown fox", "jumps over the lazy dog"]
CLOUDFLARE_RUN = "/client/v4/accounts/acct123/ai/run/"

# (model, route, upstream model, the path its upstream is asked at)
ROUTES = [
    ("bge-m3", "cloudflare", "@cf/baai/bge-m3", CLOUDFLARE_RUN + "@cf/baai/bge-m3"),
    (
        "openai/text-embedding-3-small",
        "openrouter",
        "openai/text-embedding-3-small",
        "/openrouter/api/v1/embeddings",
    ),
    ("local-embed", "local", "embedder", "/local/v1/embeddings"),
    ("sim/embedding", "sim", "embedding", None),
]


@pytest.fixture
def sdk(embedding_gateway, client_for):
    return client_for(embedding_gateway)


def expected(model: str, text: str) -> list[float]:
    return embed(text, 1024) if model.startswith("sim/") else fake_vector(text)


def requests_to(upstream, path: str, since: int) -> list[Received]:
    return [r for r in upstream.requests[since:] if r.path == path]


def post(gateway, key: str | None = None, **body) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/embeddings",
        json=body,
        headers={"authorization": f"Bearer {key or gateway.key}"},
        timeout=30,
    )


@pytest.mark.parametrize(("model", "route", "upstream_model", "path"), ROUTES)
@pytest.mark.parametrize("encoding_format", [openai.omit, "float"])
def test_every_route_answers_in_both_encodings(
    sdk, embedding_gateway, model, route, upstream_model, path, encoding_format
):
    before = len(embedding_gateway.upstream.requests)
    raw = sdk.embeddings.with_raw_response.create(
        model=model, input=TEXTS, encoding_format=encoding_format
    )
    assert raw.headers["x-callmissed-route"] == route
    assert raw.headers["x-callmissed-upstream-model"] == upstream_model
    answer = raw.parse()
    assert [item.index for item in answer.data] == [0, 1]
    for item, text in zip(answer.data, TEXTS, strict=True):
        assert item.embedding == pytest.approx(expected(model, text), rel=1e-6, abs=1e-7)
    assert answer.usage.prompt_tokens > 0
    if path is not None:
        (received,) = requests_to(embedding_gateway.upstream, path, before)
        if route == "cloudflare":
            assert received.body == {"text": TEXTS}
        else:  # pass-through: the SDK's own encoding choice reaches the upstream
            wanted = "float" if encoding_format == "float" else "base64"
            assert received.body["encoding_format"] == wanted
            assert received.body["input"] == TEXTS


@pytest.mark.parametrize(("model", "route", "upstream_model", "path"), ROUTES)
def test_a_single_string_is_one_input(sdk, model, route, upstream_model, path):
    answer = sdk.embeddings.create(model=model, input="hello world")
    assert len(answer.data) == 1
    assert answer.data[0].embedding == pytest.approx(expected(model, "hello world"), rel=1e-6)


def _floats(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("model", ["local-embed-floats", "bge-m3"])
def test_base64_is_little_endian_float32_when_the_upstream_sends_floats(embedding_gateway, model):
    response = post(embedding_gateway, model=model, input=TEXTS, encoding_format="base64")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [_floats(item["embedding"]) for item in data] == [fake_vector(t) for t in TEXTS]


def test_base64_from_the_upstream_passes_through_untouched(embedding_gateway):
    response = post(embedding_gateway, model="local-embed", input=TEXTS, encoding_format="base64")
    vector = fake_vector(TEXTS[0])
    sent = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    assert response.json()["data"][0]["embedding"] == sent


def test_float_is_the_default_for_clients_that_do_not_say(embedding_gateway):
    response = post(embedding_gateway, model="bge-m3", input="hi")
    assert response.json()["data"][0]["embedding"] == fake_vector("hi")
    assert response.json()["object"] == "list"


def test_workers_ai_batches_are_split_at_100_and_merged_in_order(sdk, embedding_gateway):
    texts = [f"document number {i}" for i in range(250)]
    before = len(embedding_gateway.upstream.requests)
    answer = sdk.embeddings.create(model="bge-m3", input=texts)
    sent = requests_to(embedding_gateway.upstream, CLOUDFLARE_RUN + "@cf/baai/bge-m3", before)
    assert sorted(len(r.body["text"]) for r in sent) == [50, 100, 100]
    assert sorted(t for r in sent for t in r.body["text"]) == sorted(texts)
    assert [item.index for item in answer.data] == list(range(250))
    assert [item.embedding for item in answer.data] == [fake_vector(t) for t in texts]


def test_a_models_batch_limit_splits_for_any_upstream(sdk, embedding_gateway):
    texts = [f"t{i}" for i in range(10)]
    before = len(embedding_gateway.upstream.requests)
    answer = sdk.embeddings.create(model="local-embed-batch", input=texts, encoding_format="float")
    sent = requests_to(embedding_gateway.upstream, "/local/v1/embeddings", before)
    assert sorted(len(r.body["input"]) for r in sent) == [2, 4, 4]
    assert [item.embedding for item in answer.data] == [fake_vector(t) for t in texts]


def test_qwen3_embedding_goes_to_workers_ai_32_at_a_time(sdk, embedding_gateway):
    before = len(embedding_gateway.upstream.requests)
    sdk.embeddings.create(model="qwen3-embedding-0.6b", input=[f"q{i}" for i in range(40)])
    path = CLOUDFLARE_RUN + "@cf/qwen/qwen3-embedding-0.6b"
    sent = requests_to(embedding_gateway.upstream, path, before)
    assert sorted(len(r.body["text"]) for r in sent) == [8, 32]


def test_dimensions_shortens_a_matryoshka_models_vectors(sdk, embedding_gateway):
    before = len(embedding_gateway.upstream.requests)
    answer = sdk.embeddings.create(model="embeddinggemma-300m", input=TEXTS, dimensions=4)
    assert [item.embedding for item in answer.data] == [
        pytest.approx(shortened(text, 4), rel=1e-6) for text in TEXTS
    ]
    (sent,) = requests_to(
        embedding_gateway.upstream, CLOUDFLARE_RUN + "@cf/google/embeddinggemma-300m", before
    )
    assert "dimensions" not in sent.body


def test_dimensions_on_the_simulator(sdk):
    answer = sdk.embeddings.create(model="sim/embedding", input="hello world", dimensions=64)
    vector = answer.data[0].embedding
    assert len(vector) == 64
    assert sum(v * v for v in vector) == pytest.approx(1.0, rel=1e-5)
    assert vector == pytest.approx(unit(embed("hello world", 1024)[:64]), rel=1e-5)


def test_dimensions_reaches_an_upstream_the_catalog_knows_nothing_about(sdk, embedding_gateway):
    answer = sdk.embeddings.create(
        model="openai/text-embedding-3-small", input="hi", dimensions=16, encoding_format="float"
    )
    assert len(answer.data[0].embedding) == 16
    received = embedding_gateway.upstream.last("openai/text-embedding-3-small")
    assert received.body["dimensions"] == 16


@pytest.mark.parametrize(
    "model",
    ["embeddinggemma-300m", "openai/text-embedding-3-small", "local-embed", "sim/embedding"],
)
@pytest.mark.parametrize("encoding_format", [openai.omit, "float"])
def test_dimensions_on_every_kind_of_route(sdk, model, encoding_format):
    answer = sdk.embeddings.create(
        model=model, input=TEXTS, dimensions=4, encoding_format=encoding_format
    )
    for item, text in zip(answer.data, TEXTS, strict=True):
        assert item.embedding == pytest.approx(expected_short(model, text, 4), rel=1e-5)


def expected_short(model: str, text: str, dimensions: int) -> list[float]:
    """Shortened here for models whose length the catalog knows, by the upstream elsewhere."""
    if model.startswith("sim/"):
        return unit(embed(text, 1024)[:dimensions])
    if model == "embeddinggemma-300m":
        return shortened(text, dimensions)
    return fake_vector(text, dimensions)  # the fake makes vectors of the length asked for


@pytest.mark.parametrize(
    ("model", "dimensions", "message"),
    [
        ("bge-m3", 12, "cannot shorten its 1024-dimensional vectors"),
        ("embeddinggemma-300m", 769, "'dimensions' may be at most 768"),
    ],
)
def test_dimensions_a_model_cannot_give_is_a_400(
    sdk, embedding_gateway, model, dimensions, message
):
    before = len(embedding_gateway.upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.embeddings.create(model=model, input="hi", dimensions=dimensions)
    assert message in raised.value.message
    assert raised.value.param == "dimensions"
    assert len(embedding_gateway.upstream.requests) == before


def test_dimensions_equal_to_the_models_own_is_no_edit(sdk, embedding_gateway):
    before = len(embedding_gateway.upstream.requests)
    sdk.embeddings.create(model="bge-m3", input="hi", dimensions=1024)
    (sent,) = requests_to(embedding_gateway.upstream, CLOUDFLARE_RUN + "@cf/baai/bge-m3", before)
    assert sent.body == {"text": ["hi"]}


def test_token_arrays_pass_through_to_an_openai_compatible_upstream(sdk, embedding_gateway):
    answer = sdk.embeddings.create(
        model="local-embed", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert [item.embedding for item in answer.data] == [
        fake_vector("tokens:1,2,3"),
        fake_vector("tokens:4,5"),
    ]
    assert embedding_gateway.upstream.last("embedder").body["input"] == [[1, 2, 3], [4, 5]]
    single = sdk.embeddings.create(model="local-embed", input=[7, 8], encoding_format="float")
    assert single.data[0].embedding == fake_vector("tokens:7,8")


def test_token_arrays_on_the_simulator_are_deterministic(sdk):
    first = sdk.embeddings.create(model="sim/embedding", input=[[1, 2, 3]])
    again = sdk.embeddings.create(model="sim/embedding", input=[[1, 2, 3]])
    assert first.data[0].embedding == again.data[0].embedding
    assert first.data[0].embedding == pytest.approx(embed([1, 2, 3], 1024), rel=1e-6)


def test_workers_ai_takes_no_token_arrays(embedding_gateway):
    response = post(embedding_gateway, model="bge-m3", input=[[1, 2, 3]])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert "text only" in response.json()["error"]["message"]


def test_native_workers_ai_options_reach_it(sdk, embedding_gateway):
    before = len(embedding_gateway.upstream.requests)
    sdk.embeddings.create(
        model="bge-large-en-v1.5", input="hi", extra_body={"pooling": "cls", "mystery": 1}
    )
    path = CLOUDFLARE_RUN + "@cf/baai/bge-large-en-v1.5"
    (sent,) = requests_to(embedding_gateway.upstream, path, before)
    assert sent.body == {"text": ["hi"], "pooling": "cls"}


def test_unknown_fields_reach_an_openai_compatible_upstream(sdk, embedding_gateway):
    sdk.embeddings.create(
        model="local-embed", input="hi", user="u-1", extra_body={"input_type": "search_query"}
    )
    received = embedding_gateway.upstream.last("embedder").body
    assert (received["user"], received["input_type"]) == ("u-1", "search_query")


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "local-embed"}, "input", "'input' must be a string"),
        ({"model": "local-embed", "input": ""}, "input", "must not be an empty string"),
        ({"model": "local-embed", "input": []}, "input", "must not be an empty array"),
        ({"model": "local-embed", "input": ["a", ""]}, "input", "'input[1]' must not be an empty"),
        ({"model": "local-embed", "input": ["a", 1]}, "input", "'input' must be a string"),
        ({"model": "local-embed", "input": [[1], [-2]]}, "input", "'input[1]' must be a non-empty"),
        ({"model": "local-embed", "input": [[1], []]}, "input", "'input[1]' must be a non-empty"),
        ({"model": "local-embed", "input": ["a"] * 2049}, "input", "at most 2048"),
        ({"model": "local-embed", "input": "a" * 1_200_004}, "input", "at most 300000"),
        ({"input": "a"}, "model", "'model' is required"),
        ({"model": "local-embed", "input": "a", "encoding_format": "hex"}, "encoding_format", ""),
        ({"model": "local-embed", "input": "a", "dimensions": 0}, "dimensions", "positive"),
        ({"model": "local-embed", "input": "a", "dimensions": "8"}, "dimensions", "positive"),
        ({"model": "local-embed", "input": "a", "user": 5}, "user", "'user' must be a string"),
        ({"model": "gpt-oss-120b", "input": "a"}, "model", "makes no embeddings"),
    ],
)
def test_bad_requests_are_openai_shaped_400s_that_reach_no_upstream(
    embedding_gateway, body, param, message
):
    before = len(embedding_gateway.upstream.requests)
    response = post(embedding_gateway, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert message in error["message"]
    assert len(embedding_gateway.upstream.requests) == before


def test_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="sim/nothing-here", input="a")


def test_a_body_that_is_not_json_is_400(embedding_gateway):
    response = httpx.post(
        f"{embedding_gateway.base_url}/embeddings",
        content=b"{not json",
        headers={"authorization": f"Bearer {embedding_gateway.key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_chat_with_an_embedding_model_is_a_400(sdk):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="bge-m3", messages=[{"role": "user", "content": "hi"}])
    assert "use POST /v1/embeddings" in raised.value.message


def test_an_upstreams_own_400_reaches_the_client(sdk):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.embeddings.create(model="local-embed-rejects", input="hi")
    assert "fake failure 400" in raised.value.message


def test_a_retryable_failure_falls_over_to_the_next_route(sdk, embedding_gateway):
    raw = sdk.embeddings.with_raw_response.create(model="embed-failover", input=TEXTS)
    assert raw.headers["x-callmissed-route"] == "openrouter"
    assert raw.headers["x-callmissed-attempts"] == "2"
    assert [item.embedding for item in raw.parse().data] == [fake_vector(t) for t in TEXTS]


def test_an_answer_with_too_few_vectors_is_an_upstream_error(sdk):
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.embeddings.create(model="local-embed-one-short", input=TEXTS)
    assert raised.value.status_code == 502
    assert "answered 1 embeddings for 2 inputs" in raised.value.message


@pytest.mark.parametrize(
    "behaviour",
    ["huge-floats", "not-numbers", "ragged", "nan-base64", "bad-base64", "too-wide"],
)
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_a_malformed_vector_is_an_upstream_error_not_an_answer(
    embedding_gateway, behaviour, encoding_format
):
    """Vectors that are not finite float32s (1e300, NaN), not numbers, not base64, of lengths
    that differ within one answer or longer than any model makes fail the attempt with a 502:
    never a 200 that carries them (nor bills them), never a 500."""
    response = post(
        embedding_gateway,
        model=f"vendor/{behaviour}",
        input=TEXTS,
        encoding_format=encoding_format,
    )
    assert response.status_code == 502, response.text[:300]
    assert "malformed embedding" in response.json()["error"]["message"]


def test_usage_counts_and_costs_the_upstreams_tokens(embedding_gateway):
    response = post(embedding_gateway, model="priced-embed", input=TEXTS)
    usage = response.json()["usage"]
    assert usage == {"prompt_tokens": 9, "total_tokens": 9, "cost": 0.000009}


def test_usage_is_estimated_where_the_upstream_counts_nothing(embedding_gateway):
    response = post(embedding_gateway, model="priced-embed-no-usage", input=TEXTS)
    # ~4 characters a token: "The quick brown fox" is 5, "jumps over the lazy dog" 6
    assert response.json()["usage"] == {"prompt_tokens": 11, "total_tokens": 11, "cost": 0.000011}


def test_openrouters_own_cost_is_replaced_by_ours(embedding_gateway):
    response = post(embedding_gateway, model="openai/text-embedding-3-small", input=TEXTS)
    usage = response.json()["usage"]
    assert usage == {"prompt_tokens": 9, "total_tokens": 9, "cost": 0.0}  # an unpriced id
    assert response.json()["id"] == "gen-emb-fake"  # the rest of its envelope passes


def test_a_paid_request_is_held_settled_and_written_to_the_ledger(embedding_gateway):
    key, key_id = new_key(embedding_gateway, credits=1)
    response = post(embedding_gateway, key, model="priced-embed", input=TEXTS)
    assert response.status_code == 200
    data = settle(embedding_gateway, key)
    assert data["usage"] == 0.000009
    rows = query(
        embedding_gateway,
        "SELECT request_id, model, route, upstream_model, stream, status, prompt_tokens,"
        " completion_tokens, cost FROM ledger WHERE key_id = ?",
        key_id,
    )
    assert rows == [
        (response.headers["x-request-id"], "priced-embed", "local", "embedder", 0, 200, 9, 0, 9)
    ]


def test_no_credit_is_a_402_before_any_upstream_call(embedding_gateway):
    key, _ = new_key(embedding_gateway, credits=0)
    before = len(embedding_gateway.upstream.requests)
    response = post(embedding_gateway, key, model="priced-embed", input=TEXTS)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    assert len(embedding_gateway.upstream.requests) == before


def test_a_failed_request_costs_nothing(embedding_gateway):
    key, key_id = new_key(embedding_gateway, credits=1)
    response = post(embedding_gateway, key, model="local-embed-one-short", input=TEXTS)
    assert response.status_code == 502
    settle(embedding_gateway, key)
    rows = query(embedding_gateway, "SELECT status, cost FROM ledger WHERE key_id = ?", key_id)
    assert rows == [(502, 0)]


def test_rate_limits_apply(embedding_gateway):
    key, _ = new_key(embedding_gateway, rpm=1)
    first = post(embedding_gateway, key, model="local-embed", input="a")
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    second = post(embedding_gateway, key, model="local-embed", input="a")
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"


def test_tpm_counts_the_inputs_tokens_and_no_output(embedding_gateway):
    key, _ = new_key(embedding_gateway, tpm=15)  # the first holds its estimate (11), uses 9
    assert post(embedding_gateway, key, model="local-embed", input=TEXTS).status_code == 200
    assert post(embedding_gateway, key, model="local-embed", input=TEXTS).status_code == 429


def test_models_say_which_ones_embed(sdk):
    models = {model.id: model.model_extra for model in sdk.models.list().data}
    assert models["bge-m3"]["capabilities"] == {"chat": False, "embedding": True}
    assert models["bge-m3"]["embedding"] == {"dimensions": 1024, "shorten": False, "batch": 100}
    assert models["qwen3-embedding-0.6b"]["embedding"]["batch"] == 32
    assert models["sim/embedding"]["embedding"]["shorten"] is True
    assert models["gpt-oss-120b"]["capabilities"] == {"chat": True, "embedding": False}
    assert "embedding" not in models["gpt-oss-120b"]
    assert models["bge-m3"]["pricing"]["input_per_million"] == 0.012
