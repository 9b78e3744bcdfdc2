"""The simulator: chat answers paced like the Getting Started page's models; embeddings offline,
deterministic, unit length, similar for similar texts."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest

from callmissed.formats.embeddings import decode_vector, shorten
from callmissed.settings import SimProfile
from callmissed.upstream.simulator import (
    MAX_SIM_DIMENSIONS,
    SimulatedResponse,
    embed,
    simulate_embeddings,
)

# sim/kimi-k2.6 in catalog.toml: the page's "What is 2+2?" on kimi-k2.6, 101 tokens thinking on.
KIMI = SimProfile(ttfb_ms=50, total_ms=1500, tokens=9, thinking_tokens=92)
QUESTION = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "What is 2+2?"}]}


def _streamed(response: SimulatedResponse) -> tuple[float, dict[str, str]]:
    """The stream's total wait, and the text of each delta field."""
    waits, fields = 0.0, {"reasoning": "", "content": ""}
    for wait, event in response.events():
        waits += wait
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:])["choices"]:
                for name in fields:
                    fields[name] += choice["delta"].get(name) or ""
    return waits, fields


def test_reasoning_effort_none_is_eleven_times_fewer_tokens_and_proportionally_sooner():
    thinking = SimulatedResponse(KIMI, QUESTION)
    instant = SimulatedResponse(KIMI, {**QUESTION, "reasoning_effort": "none"})
    (thinking_time, _), (instant_time, _) = _streamed(thinking), _streamed(instant)
    pace = (1.5 - 0.05) / 100  # 101 tokens: the first at 50 ms, the last at 1.5 s
    assert thinking_time == pytest.approx(1.5)
    assert instant_time == pytest.approx(0.05 + 8 * pace)  # 9 tokens
    assert thinking.duration == pytest.approx(thinking_time)
    assert instant.duration == pytest.approx(instant_time)


def test_a_max_tokens_cap_ends_the_answer_sooner():
    whole = SimulatedResponse(KIMI, QUESTION)
    capped = SimulatedResponse(KIMI, {**QUESTION, "max_tokens": 10})
    assert capped.duration < whole.duration / 5


def test_the_streamed_answer_reads_like_the_whole_one():
    instant = SimProfile(ttfb_ms=0, total_ms=0, tokens=9, thinking_tokens=92)
    _, fields = _streamed(SimulatedResponse(instant, QUESTION))
    whole, _ = asyncio.run(SimulatedResponse(instant, QUESTION).read(1 << 20))
    message = orjson.loads(whole)["choices"][0]["message"]
    assert fields == {"reasoning": message["reasoning"], "content": message["content"]}
    assert fields["content"].startswith("Quicksort")


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def test_the_same_text_gets_the_same_unit_vector():
    first = embed("The cat sat on the mat", 384)
    assert first == embed("The cat sat on the mat", 384)
    assert len(first) == 384
    assert _dot(first, first) == pytest.approx(1.0)


def test_texts_that_share_words_are_closer_than_texts_that_do_not():
    cat = embed("the cat sat on the mat", 1024)
    kitten = embed("a cat sat on a rug", 1024)
    physics = embed("quantum chromodynamics lattice", 1024)
    assert _dot(cat, kitten) > _dot(cat, physics) + 0.2


@pytest.mark.parametrize("dimensions", [1, 2, 5, 16, 100])
def test_every_shortened_prefix_keeps_some_of_the_text(dimensions):
    for text in ("hello", "one two", "!!!", "Grüße aus Köln"):
        short = shorten(embed(text, 1024), dimensions)
        assert _dot(short, short) == pytest.approx(1.0)


def test_token_arrays_are_embedded_by_their_ids():
    assert embed([1, 2, 3], 64) == embed([1, 2, 3], 64)
    assert embed([1, 2, 3], 64) != embed([3, 2, 1, 4], 64)


def _answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = simulate_embeddings(orjson.dumps(body))
    answer, more = asyncio.run(response.read(2**30))
    assert not more
    return response.status, orjson.loads(answer)


def test_the_simulated_server_answers_in_the_openai_shape():
    status, answer = _answer(
        {"model": "embedding", "input": ["a b", "c"], "dimensions": 8, "encoding_format": "base64"}
    )
    assert status == 200
    assert answer["model"] == "sim/embedding"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert decode_vector(answer["data"][0]["embedding"]) == pytest.approx(embed("a b", 8))
    assert answer["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


@pytest.mark.parametrize("dimensions", [0, MAX_SIM_DIMENSIONS + 1, None])
def test_the_simulated_server_refuses_a_size_it_will_not_make(dimensions):
    status, answer = _answer({"model": "embedding", "input": ["a"], "dimensions": dimensions})
    assert status == 400
    assert "dimensions" in answer["error"]["message"]
