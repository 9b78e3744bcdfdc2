"""Prompt caching end to end, driven by the official openai and anthropic SDKs: the client's cache
hints reach the upstream, and the cache reads and writes it reports come back in each dialect's
fields and bill at the cached prices.

The fake upstream's "cached" model reports, like OpenRouter, 1000 prompt tokens of which 600 were
read from the cache and 200 written to it, and 6 completion tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from callmissed.accounting.pricing import format_credits
from tests.accounting import PRICED, new_key, query, settle, start_billing_gateway
from tests.conftest import CONFIG, Gateway, stop_gateway

CACHED = """
[models."priced-cached"]
routes = ["local:cached"]

[models."anthropic/claude-cached"]
routes = ["openrouter:anthropic/cached"]

[prices."priced-cached"]
input = 1.0
cached_input = 0.5
cache_write = 1.25
output = 2.0

[prices."anthropic/claude-cached"]
input = 1.0
cached_input = 0.5
cache_write = 1.25
output = 2.0
"""
# 200 uncached prompt tokens at 1, 600 cache reads at 0.5, 200 cache writes at 1.25, 6 output at 2
CACHED_COST = 200 * 1 + 300 + 250 + 6 * 2
CACHE: Any = {"type": "ephemeral"}
HOUR: Any = {"type": "ephemeral", "ttl": "1h"}


@pytest.fixture(scope="module")
def caching(upstream, tmp_path_factory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("caching")
    config = workdir / "caching.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + PRICED + CACHED)
    running = start_billing_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config))
    yield running
    stop_gateway(running)


@pytest.fixture
def metered(caching) -> tuple[str, int]:
    return new_key(caching, credits=1)


def _ledger(gateway: Gateway, key: str, key_id: int) -> list[tuple[Any, ...]]:
    settle(gateway, key)
    return query(
        gateway,
        "SELECT prompt_tokens, cached_tokens, cost, uncharged FROM ledger WHERE key_id = ?",
        key_id,
    )


@pytest.mark.parametrize("model", ["priced-cached", "anthropic/claude-cached"])
def test_openai_dialect_prompt_cache_key_passes_and_cache_reads_bill_cached(
    caching, metered, model
):
    key, key_id = metered
    with openai.OpenAI(base_url=caching.base_url, api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=10,
            prompt_cache_key="conversation-42",
        )
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=10,
            prompt_cache_key="conversation-42",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    upstream_model = model.replace("claude-", "").replace("priced-", "")
    assert caching.upstream.last(upstream_model).body["prompt_cache_key"] == "conversation-42"
    for usage in (completion.usage, chunks[-1].usage):
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 600
        details = usage.prompt_tokens_details.model_dump()
        assert details["cache_write_tokens"] == 200
        assert usage.model_dump()["cost"] == format_credits(CACHED_COST)
    assert _ledger(caching, key, key_id) == [(1000, 600, CACHED_COST, 0)] * 2


def test_anthropic_cache_control_reaches_openrouter_on_parts_and_tools(caching, metered):
    key, _ = metered
    tool: Any = {
        "name": "look",
        "description": "Look it up",
        "input_schema": {"type": "object", "properties": {}},
        "cache_control": HOUR,
    }
    system: Any = [
        {"type": "text", "text": "You are terse.", "cache_control": HOUR},
        {"type": "text", "text": "Today is Tuesday."},
    ]
    messages: list[Any] = [
        {"role": "user", "content": [
            {"type": "text", "text": "A long document.", "cache_control": CACHE},
            {"type": "text", "text": "Look it up."},
        ]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Found.",
             "cache_control": CACHE},
        ]},
    ]  # fmt: skip
    with anthropic.Anthropic(base_url=caching.url, api_key=key, max_retries=0) as claude:
        claude.messages.create(
            model="anthropic/claude-cached",
            max_tokens=64,
            system=system,
            tools=[tool],
            messages=messages,
        )
        sent = caching.upstream.last("anthropic/cached")
        assert sent.dialect == "openrouter"
        system, user, _, tool_message = sent.body["messages"]
        assert system["content"] == [
            {"type": "text", "text": "You are terse.", "cache_control": HOUR},
            {"type": "text", "text": "Today is Tuesday."},
        ]
        assert user["content"][0] == {
            "type": "text",
            "text": "A long document.",
            "cache_control": CACHE,
        }
        assert tool_message["content"] == [
            {"type": "text", "text": "Found.", "cache_control": CACHE}
        ]
        assert sent.body["tools"][0]["cache_control"] == HOUR
        # Top-level (automatic) caching: a breakpoint on the last block.
        hello: list[Any] = [{"role": "user", "content": "Say hello"}]
        claude.messages.create(
            model="anthropic/claude-cached", max_tokens=64, cache_control=CACHE, messages=hello
        )
    last = caching.upstream.last("anthropic/cached").body["messages"][-1]
    assert last["content"] == [{"type": "text", "text": "Say hello", "cache_control": CACHE}]


def test_anthropic_dialect_reports_cache_reads_and_writes_and_bills_them_cached(caching, metered):
    key, key_id = metered
    messages: list[Any] = [{"role": "user", "content": "Say hello"}]
    with anthropic.Anthropic(base_url=caching.url, api_key=key, max_retries=0) as claude:
        message = claude.messages.create(
            model="anthropic/claude-cached", max_tokens=64, messages=messages
        )
        estimate = claude.messages.count_tokens(
            model="anthropic/claude-cached", messages=messages
        ).input_tokens
        with claude.messages.stream(
            model="anthropic/claude-cached", max_tokens=64, messages=messages
        ) as stream:
            starts = [event.message.usage for event in stream if event.type == "message_start"]
            final = stream.get_final_message()
    for usage in (message.usage, final.usage):
        assert usage.input_tokens == 200  # the prompt's uncached tokens, as Anthropic counts
        assert usage.cache_read_input_tokens == 600
        assert usage.cache_creation_input_tokens == 200
        assert usage.output_tokens == 6
    # message_start: what an agent tracks its context by, before the upstream's count arrives
    [start] = starts
    assert start.input_tokens == estimate > 0
    assert (start.cache_read_input_tokens, start.cache_creation_input_tokens) == (0, 0)
    assert _ledger(caching, key, key_id) == [(1000, 600, CACHED_COST, 0)] * 2


def test_responses_dialect_reports_cache_reads_and_writes_and_bills_them_cached(caching, metered):
    key, key_id = metered
    with openai.OpenAI(base_url=caching.base_url, api_key=key, max_retries=0) as client:
        response = client.responses.create(model="priced-cached", input="Say hello")
        with client.responses.stream(model="priced-cached", input="Say hello") as stream:
            final = stream.get_final_response()
    for usage in (response.usage, final.usage):
        assert usage is not None
        assert (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (1000, 600)
        assert usage.input_tokens_details.model_dump()["cache_write_tokens"] == 200
        assert usage.model_dump()["cost"] == format_credits(CACHED_COST)
    assert _ledger(caching, key, key_id) == [(1000, 600, CACHED_COST, 0)] * 2


def test_the_hold_covers_a_prompt_that_is_all_written_to_the_cache(caching):
    """Writes cost more than input here (1.25 vs 1): the worst case prices the prompt so."""
    key, _ = new_key(caching, credits="0.000028")
    with (
        openai.OpenAI(base_url=caching.base_url, api_key=key, max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as refused,
    ):
        client.chat.completions.create(
            model="priced-cached",
            messages=[{"role": "user", "content": "Say hello"}],  # ~7 tokens, estimated
            max_tokens=10,
        )
    assert refused.value.status_code == 402
    # 7 prompt tokens x 1.25 + 10 output tokens x 2 = 28.75: 29 micro-credits
    assert "could cost up to $0.000029" in refused.value.message
