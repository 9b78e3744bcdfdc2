"""Holds on a prompt's bound: a prompt a tokenizer counts far above the ~4 characters a token
estimate ("x x x ...", Hindi) never costs a metered key more than its hold.

Against `metered/bytes` (tests/fakes/openrouter.py), a fake OpenRouter model whose tokenizer bills
a prompt token per UTF-8 byte, the most any real one can: with one micro-credit less than the
request really costs, the key is refused up front (402) on every endpoint — an estimate's hold
would let it through and leave the rest `uncharged`; with enough, it pays exactly the bill.
(A Responses body passed through to OpenRouter was held on its JSON bytes already; a translated
one, and every other endpoint, on the estimate.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from callmissed.token_bound import MESSAGE_OVERHEAD, REQUEST_OVERHEAD, prompt_bound
from tests.accounting import BACKENDS, backend_env, new_key, query, settle, start_billing_gateway
from tests.conftest import Gateway, stop_gateway
from tests.fakes.openrouter import PER_BYTE

# Each a few thousand bytes that an estimate counts at a third or a quarter of that.
TEXTS = {"x-x-x": "x " * 3000, "hindi": "नमस्ते दुनिया " * 300}
# The per-byte model behind an upstream that serves no Responses API: /v1/responses translated.
TRANSLATED = """
[providers.bytes]
type = "openai"
base_url = "{upstream}/openrouter/api/v1"

[models."bytes-chat"]
routes = ["bytes:metered/bytes"]

[prices."bytes-chat"]
input = 1.0
output = 2.0
"""
ROWS = "SELECT status, prompt_tokens, cost, uncharged FROM ledger WHERE key_id = ?"


@pytest.fixture(scope="module", params=BACKENDS)
def billing(request, upstream, tmp_path_factory):
    with backend_env(request.param) as env:
        workdir = tmp_path_factory.mktemp("hold-bound")
        translated = TRANSLATED.format(upstream=upstream.url)
        running = start_billing_gateway(upstream, workdir, extra_config=translated, **env)
        yield running
        stop_gateway(running)


def _post(gateway: Gateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-api-key": key}
    return httpx.post(f"{gateway.base_url}{path}", json=body, headers=headers, timeout=30)


# Each endpoint: the request for a text, and what the per-byte upstream bills for it (micro-
# credits: $1 a million prompt tokens, $2 a million out; fakes' counts in their docstrings).


def _chat(text: str, stream: bool) -> tuple[str, dict[str, Any], int]:
    body = {"model": PER_BYTE, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return "/chat/completions", {**body, "stream": stream}, 4 + len(text.encode()) + 2 * 4


def _messages(text: str, stream: bool) -> tuple[str, dict[str, Any], int]:
    _, body, cost = _chat(text, stream)
    return "/messages", body, cost  # the same body is an Anthropic one: max_tokens, messages


def _responses(text: str, stream: bool) -> tuple[str, dict[str, Any], int]:
    body = {"model": PER_BYTE, "input": text, "max_output_tokens": 6, "stream": stream}
    return "/responses", body, 4 + len(text.encode()) + 2 * 6


def _translated(text: str, stream: bool) -> tuple[str, dict[str, Any], int]:
    path, body, cost = _responses(text, stream)
    return path, {**body, "model": "bytes-chat"}, cost  # billed as chat: 4 a message, the same


def _embeddings(text: str, stream: bool) -> tuple[str, dict[str, Any], int]:
    inputs = [text, text[: len(text) // 2]]
    return (
        "/embeddings",
        {"model": PER_BYTE, "input": inputs},
        sum(2 + len(t.encode()) for t in inputs),
    )


ENDPOINTS: dict[str, Callable[[str, bool], tuple[str, dict[str, Any], int]]] = {
    "chat": _chat,
    "messages": _messages,
    "responses": _responses,
    "responses-translated": _translated,
    "embeddings": _embeddings,
}
CASES = [
    pytest.param(name, stream, id=f"{name}{'-stream' if stream else ''}")
    for name in ENDPOINTS
    for stream in ([False] if name == "embeddings" else [False, True])
]


def _rows(gateway: Gateway, key: str, key_id: int, count: int) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 10
    while True:
        settle(gateway, key)
        found = query(gateway, ROWS, key_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize(("endpoint", "stream"), CASES)
def test_a_prompt_dense_in_tokens_is_refused_or_paid_in_full(billing, endpoint, stream, text):
    path, body, cost = ENDPOINTS[endpoint](text, stream)
    short, short_id = new_key(billing, credits=f"{(cost - 1) / 1e6:.6f}")
    refused = _post(billing, short, path, body)
    assert refused.status_code == 402, refused.text
    assert "Insufficient credits" in refused.text
    assert _rows(billing, short, short_id, 0) == []  # nothing reached the upstream

    key, key_id = new_key(billing, credits=1)
    response = _post(billing, key, path, body)
    assert response.status_code == 200, response.text
    response.read()  # a stream to its end
    [(status, _, charged, uncharged)] = _rows(billing, key, key_id, 1)
    assert (status, charged, uncharged) == (200, cost, 0)


def test_the_hold_is_the_prompts_bound_and_the_output_cap(billing):
    """Credit of exactly the bound and the output cap is enough; a micro-credit less is not."""
    text = TEXTS["hindi"]
    _, body, cost = _chat(text, stream=False)
    bound = REQUEST_OVERHEAD + MESSAGE_OVERHEAD + len(text.encode()) + len(b"user") + 4
    assert prompt_bound(body) == bound > cost
    hold = bound + 2 * 4
    short, _ = new_key(billing, credits=f"{(hold - 1) / 1e6:.6f}")
    assert _post(billing, short, "/chat/completions", body).status_code == 402
    key, key_id = new_key(billing, credits=f"{hold / 1e6:.6f}")
    assert _post(billing, key, "/chat/completions", body).status_code == 200
    assert _rows(billing, key, key_id, 1)[0][2:] == (cost, 0)
