"""Claims of the Getting Started page (../shared/spec/getting-started.txt), one test each."""

from __future__ import annotations

import pytest

# "Pick the right model": model -> route, as the page tables it.
ROUTES = {
    "gpt-oss-120b": "cloudflare",
    "auto": "openrouter",
    "anthropic/claude-sonnet-4.6": "openrouter",
    "anthropic/claude-haiku-4.5": "openrouter",
    "kimi-k2.6": "cloudflare",
}


def test_python_quickstart_streams(client):
    stream = client.chat.completions.create(
        model="gpt-oss-120b",
        messages=[{"role": "user", "content": "Explain quicksort in one paragraph."}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "Hello world"


@pytest.mark.parametrize(("model", "route"), ROUTES.items())
def test_models_take_the_routes_the_page_names(client, model, route):
    raw = client.chat.completions.with_raw_response.create(
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


def test_kimi_instant_mode_sends_none(client, gateway):
    client.chat.completions.create(
        model="kimi-k2.6",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        reasoning_effort="none",
    )
    assert gateway.upstream.last("@cf/moonshotai/kimi-k2.6").body["reasoning_effort"] == "none"


def test_one_client_instance_serves_many_requests(client):
    for _ in range(3):
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello world"
