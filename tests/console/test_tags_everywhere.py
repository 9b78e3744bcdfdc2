"""Tags reach the ledger from every edge: Anthropic Messages, the Responses API, embeddings."""

from __future__ import annotations

import anthropic
import openai

from tests.api.embedding_gateway import embedding_gateway  # noqa: F401 - the fixture
from tests.console.conftest import admin_get, sdk
from tests.console.test_requests_api import console  # noqa: F401 - the fixture


def _tags(gateway, request_id: str) -> list[str]:
    tags: list[str] = admin_get(gateway, f"/admin/requests/{request_id}")["data"]["tags"]
    return tags


def test_anthropic_messages_carry_tags(console):  # noqa: F811
    with anthropic.Anthropic(
        base_url=console.url, api_key=console.key, max_retries=0,
        default_headers={"x-callmissed-tags": "sdk:anthropic"},
    ) as client:  # fmt: skip
        raw = client.messages.with_raw_response.create(
            model="plain", max_tokens=20, messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": "u-42"},
        )  # fmt: skip
    assert _tags(console, raw.headers["x-request-id"]) == ["sdk:anthropic", "user_id:u-42"]


def test_responses_carry_tags(console):  # noqa: F811
    with sdk(console, **{"x-callmissed-tags": "sdk:responses"}) as client:
        raw = client.responses.with_raw_response.create(
            model="plain", input="hi", metadata={"team": "agents"}
        )
    assert _tags(console, raw.headers["x-request-id"]) == ["sdk:responses", "team:agents"]


def test_embeddings_carry_tags(embedding_gateway):  # noqa: F811
    with openai.OpenAI(
        base_url=embedding_gateway.base_url, api_key=embedding_gateway.key, max_retries=0,
        default_headers={"x-callmissed-tags": "sdk:embeddings"},
    ) as client:  # fmt: skip
        raw = client.embeddings.with_raw_response.create(model="local-embed", input="hello")
    assert _tags(embedding_gateway, raw.headers["x-request-id"]) == ["sdk:embeddings"]
