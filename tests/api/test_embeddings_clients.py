"""Client libraries as apps use them on POST /v1/embeddings: the Node SDK, LangChain."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from callmissed.upstream.simulator import embed
from tests.api.embedding_gateway import embedding_gateway, shortened, unit
from tests.conftest import require_service
from tests.fakes.embeddings import fake_vector
from tests.test_js_sample import JS, node

__all__ = ["embedding_gateway", "node"]  # fixtures, used by name

TEXTS = ["The quick brown fox", "jumps over the lazy dog"]


def _expected(model: str, text: str, dimensions: int | None = None) -> list[float]:
    if model.startswith("sim/"):
        vector = embed(text, 1024)
        return unit(vector[:dimensions]) if dimensions else vector
    if dimensions and model == "embeddinggemma-300m":  # shortened by the gateway
        return shortened(text, dimensions)
    return fake_vector(text, dimensions or 8)  # the fake upstream honours `dimensions`


@pytest.mark.parametrize(
    ("model", "dimensions"),
    [
        ("embeddinggemma-300m", 4),  # Workers AI
        ("openai/text-embedding-3-small", 16),  # OpenRouter
        ("local-embed", 5),  # an OpenAI-compatible server from the config file
        ("sim/embedding", 32),
    ],
)
def test_the_node_sdk_embeds_on_every_kind_of_route(embedding_gateway, node, model, dimensions):
    env = {
        **embedding_gateway.env,
        "CALLMISSED_KEY": embedding_gateway.key,
        "CALLMISSED_BASE_URL": embedding_gateway.base_url,
    }
    args = [node, "embeddings.mjs", model, *([str(dimensions)] if dimensions else [])]
    result = subprocess.run(
        args, cwd=JS, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    got = orjson.loads(result.stdout)
    assert got["indexes"] == [0, 1]
    assert got["usage"]["prompt_tokens"] > 0
    for vector, text in zip(got["default"], TEXTS, strict=True):
        assert vector == pytest.approx(_expected(model, text), rel=1e-6, abs=1e-7)
    assert got["float"] == [pytest.approx(_expected(model, TEXTS[0]), rel=1e-9)]
    if dimensions:
        for vector, text in zip(got["dimensions"], TEXTS, strict=True):
            assert vector == pytest.approx(_expected(model, text, dimensions), rel=1e-5, abs=1e-6)


@pytest.fixture
def langchain_embeddings(embedding_gateway):
    try:
        from langchain_openai import OpenAIEmbeddings
    except ImportError:
        require_service(
            "LangChain", "langchain-openai is not installed (scripts/setup installs it)"
        )
        raise

    def make(model: str, **options):
        # check_embedding_ctx_length=False: LangChain's tiktoken pre-tokenising is for OpenAI's
        # own models (and downloads its vocabulary); for any other server it sends text.
        return OpenAIEmbeddings(
            model=model,
            base_url=embedding_gateway.base_url,
            api_key=embedding_gateway.key,
            check_embedding_ctx_length=False,
            max_retries=0,
            **options,
        )

    return make


@pytest.mark.parametrize("model", ["bge-m3", "local-embed", "sim/embedding"])
def test_langchain_openai_embeddings(langchain_embeddings, model):
    embeddings = langchain_embeddings(model)
    documents = embeddings.embed_documents(TEXTS)
    assert documents == [
        pytest.approx(_expected(model, text), rel=1e-6, abs=1e-7) for text in TEXTS
    ]
    assert embeddings.embed_query(TEXTS[1]) == pytest.approx(documents[1])


def test_langchain_splits_its_own_chunks_and_asks_for_dimensions(langchain_embeddings):
    embeddings = langchain_embeddings("sim/embedding", dimensions=16, chunk_size=3)
    texts = [f"passage {i}" for i in range(7)]
    vectors = embeddings.embed_documents(texts)
    assert vectors == [pytest.approx(_expected("sim/embedding", t, 16), rel=1e-5) for t in texts]
