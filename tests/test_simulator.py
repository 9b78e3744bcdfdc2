"""The simulator's embeddings: offline, deterministic, unit length, similar for similar texts."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest

from callmissed.formats.embeddings import decode_vector, shorten
from callmissed.simulator import MAX_SIM_DIMENSIONS, embed, simulate_embeddings


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
