"""Claims of the Getting Started page, one test each, for every kind of key: an unlimited one and
one that pays with credits (`keys create --credits`)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import Gateway

# "Pick the right model": model -> route, as the page tables it.
ROUTES = {
    "gpt-oss-120b": "cloudflare",
    "auto": "openrouter",
    "anthropic/claude-sonnet-4.6": "openrouter",
    "anthropic/claude-haiku-4.5": "openrouter",
    "kimi-k2.6": "cloudflare",
}


@pytest.fixture(scope="module")
def metered_key(gateway: Gateway) -> str:
    return gateway.create_key("--credits", "5")


@pytest.fixture(params=["unlimited", "metered"])
def page_client(request, gateway: Gateway, metered_key: str) -> Iterator[openai.OpenAI]:
    """The page's `OpenAI(api_key=..., base_url=...)`, with each kind of key."""
    key = gateway.key if request.param == "unlimited" else metered_key
    with openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as sdk:
        yield sdk


def test_python_quickstart_streams(page_client):
    stream = page_client.chat.completions.create(
        model="gpt-oss-120b",
        messages=[{"role": "user", "content": "Explain quicksort in one paragraph."}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "Hello world"


@pytest.mark.parametrize(("model", "route"), ROUTES.items())
def test_models_take_the_routes_the_page_names(page_client, model, route):
    raw = page_client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-callmissed-route"] == route


def test_auto_is_openrouters_free_router(client, gateway):
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert gateway.upstream.last("openrouter/free").dialect == "openrouter"


def test_every_model_on_the_page_is_listed(client):
    listed = {model.id for model in client.models.list()}
    page = {
        "gpt-oss-120b",
        "auto",
        "anthropic/claude-sonnet-4.6",
        "anthropic/claude-haiku-4.5",
        "kimi-k2.5",
        "kimi-k2.6",
        "gemma-4-26b-a4b-it",
        "nemotron-3-super",
        "glm-4.7-flash",
        "sarvam-30b",
        "sarvam-105b",
        "mistral-small-3.1",
    }
    assert page <= listed


def test_kimi_instant_mode_sends_none(page_client, gateway):
    page_client.chat.completions.create(
        model="kimi-k2.6",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        reasoning_effort="none",
    )
    assert gateway.upstream.last("@cf/moonshotai/kimi-k2.6").body["reasoning_effort"] == "none"


def test_kimi_instant_mode_answers_in_9_tokens_instead_of_101(page_client):
    """The page's concrete numbers, offline: sim/kimi-k2.6 thinks as kimi-k2.6 does."""

    def completion_tokens(**extra: str) -> int:
        completion = page_client.chat.completions.create(
            model="sim/kimi-k2.6", messages=[{"role": "user", "content": "What is 2+2?"}], **extra
        )
        assert completion.usage is not None
        return int(completion.usage.completion_tokens)

    assert completion_tokens() == 101
    assert completion_tokens(reasoning_effort="none") == 9


def test_one_client_instance_serves_many_requests(page_client):
    for _ in range(3):
        stream = page_client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello world"
