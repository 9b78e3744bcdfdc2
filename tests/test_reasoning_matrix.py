"""The reasoning_effort matrix of the Getting Started page, checked at the upstream's door.

Every row and column of the spec's table: what the client sends, what the upstream receives,
and what the x-callmissed-reasoning-effort header reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import httpx
import openai
import pytest

DROPPED = object()  # the upstream received no reasoning_effort at all

# model -> (upstream model id, {client value: value the upstream receives})
TOGGLE = {"none": "none", "low": "low", "medium": "medium", "high": "high", "minimal": "none"}
MANDATORY = {"none": "low", "low": "low", "medium": "medium", "high": "high", "minimal": "low"}
SILENT = dict.fromkeys(TOGGLE, DROPPED)
AS_IS = {value: value for value in [*TOGGLE, "xhigh", "max"]}

MATRIX: dict[str, tuple[str, Mapping[str, object]]] = {
    "kimi-k2.5": ("@cf/moonshotai/kimi-k2.5", TOGGLE),
    "kimi-k2.6": ("@cf/moonshotai/kimi-k2.6", TOGGLE),
    "gemma-4-26b-a4b-it": ("@cf/google/gemma-4-26b-a4b-it", TOGGLE),
    "gpt-oss-120b": ("@cf/openai/gpt-oss-120b", MANDATORY),
    "nemotron-3-super": ("@cf/nvidia/nemotron-3-120b-a12b", MANDATORY),
    "glm-4.7-flash": ("@cf/zai-org/glm-4.7-flash", MANDATORY),
    "sarvam-30b": ("sarvam-30b", MANDATORY),
    "sarvam-105b": ("sarvam-105b", MANDATORY),
    "mistral-small-3.1": ("@cf/mistralai/mistral-small-3.1-24b-instruct", SILENT),
    "openai/gpt-5.1": ("openai/gpt-5.1", AS_IS),
    "anthropic/claude-sonnet-4.6": ("anthropic/claude-sonnet-4.6", AS_IS),
}

# No published USD price (docs/credits.md): a key with a credit limit gets 403 model_not_priced.
# (openai/gpt-5.1 and every other id OpenRouter lists are priced from its model list.)
UNPRICED = {"sarvam-30b", "sarvam-105b"}


@pytest.fixture(scope="module")
def metered_client(gateway) -> Iterator[openai.OpenAI]:
    key = gateway.create_key("--credits", "5")
    with openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as sdk:
        yield sdk


CASES = [
    (model, sent, received)
    for model, (_, table) in MATRIX.items()
    for sent, received in table.items()
]


@pytest.mark.parametrize(("model", "sent", "received"), CASES)
def test_upstream_receives_what_the_matrix_says(client, gateway, model, sent, received):
    upstream_model = MATRIX[model][0]
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        reasoning_effort=sent,
    )
    body = gateway.upstream.last(upstream_model).body
    header = raw.headers["x-callmissed-reasoning-effort"]
    if received is DROPPED:
        assert "reasoning_effort" not in body
        assert header == "dropped"
    else:
        assert body["reasoning_effort"] == received
        assert header == received


# What a key with a credit limit may use: the priced models (docs/credits.md refuses the rest).
PRICED_CASES = [case for case in CASES if case[0] not in UNPRICED]


@pytest.mark.parametrize(("model", "sent", "received"), PRICED_CASES)
def test_a_key_that_pays_with_credits_gets_the_same_matrix(
    gateway, metered_client, model, sent, received
):
    raw = metered_client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        reasoning_effort=sent,
    )
    body = gateway.upstream.last(MATRIX[model][0]).body
    assert body.get("reasoning_effort", DROPPED) == received
    assert raw.headers["x-callmissed-reasoning-effort"] == (
        "dropped" if received is DROPPED else received
    )


# More of the OpenRouter row, ids outside the catalog, streamed too: priced from OpenRouter's model
# list (the fake serves one), so a paying key can use any of them as a free one can.
OPENROUTER_IDS = ["openai/gpt-5-mini", "anthropic/claude-opus-4.5"]


@pytest.mark.parametrize("sent", list(AS_IS))
@pytest.mark.parametrize("model", OPENROUTER_IDS)
def test_openrouter_ids_take_the_matrix_with_a_metered_key(metered_client, gateway, model, sent):
    stream = sent in ("low", "high")  # streamed and whole answers alike
    raw = metered_client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        reasoning_effort=sent,
        max_tokens=100,
        stream=stream,
    )
    assert raw.headers["x-callmissed-reasoning-effort"] == sent
    assert gateway.upstream.last(model).body["reasoning_effort"] == sent
    if not stream:
        assert raw.parse().usage.model_extra["cost"] > 0  # billed at OpenRouter's price


def test_no_reasoning_effort_means_none_is_added(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}]
    )
    assert "reasoning_effort" not in gateway.upstream.last("@cf/moonshotai/kimi-k2.6").body
    assert "x-callmissed-reasoning-effort" not in raw.headers


@pytest.mark.parametrize("model", ["kimi-k2.6", "gpt-oss-120b", "mistral-small-3.1", "sarvam-30b"])
@pytest.mark.parametrize("value", ["xhigh", "max", "turbo", ""])
def test_values_outside_the_matrix_are_400_for_catalog_models(client, model, value):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], reasoning_effort=value
        )
    assert caught.value.param == "reasoning_effort"


def test_reasoning_effort_must_be_a_string(gateway):
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key}"},
        json={
            "model": "kimi-k2.6",
            "messages": [{"role": "user", "content": "hi"}],
            "reasoning_effort": 3,
        },
    )
    assert response.status_code == 400


def test_models_endpoint_publishes_the_matrix(client):
    models = {model.id: model for model in client.models.list()}
    kimi = models["kimi-k2.6"].model_extra["reasoning_effort"]
    assert kimi["sent"] == TOGGLE
    gpt = models["gpt-oss-120b"].model_extra["reasoning_effort"]
    assert gpt["sent"] == MANDATORY
    mistral = models["mistral-small-3.1"].model_extra["reasoning_effort"]
    assert set(mistral["sent"].values()) == {"drop"}
    assert models["auto"].model_extra["reasoning_effort"]["policy"] == "passthrough"


def test_simulated_thinking_model_spends_fewer_tokens_with_none(client):
    def completion_tokens(**extra: str) -> int:
        completion = client.chat.completions.create(
            model="sim/instant-thinker", messages=[{"role": "user", "content": "2+2?"}], **extra
        )
        assert completion.usage is not None
        return int(completion.usage.completion_tokens)

    assert completion_tokens() > completion_tokens(reasoning_effort="none")
