"""formats.embeddings: the request checks and the vector encodings, pure."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from callmissed.errors import InvalidRequest
from callmissed.formats.embeddings import (
    MAX_DIMENSIONS,
    decode_vector,
    encode_vector,
    finish_vector,
    parse_embedding_request,
    shorten,
)


def test_every_input_shape_becomes_a_list_of_inputs():
    def inputs(value: Any) -> list[Any]:
        return parse_embedding_request({"model": "m", "input": value}).inputs

    assert inputs("a b") == ["a b"]
    assert inputs(["a", "b"]) == ["a", "b"]
    assert inputs([1, 2, 3]) == [[1, 2, 3]]
    assert inputs([[1, 2], [3]]) == [[1, 2], [3]]


def test_defaults_and_the_estimate():
    request = parse_embedding_request({"model": "m", "input": ["abcd" * 3, "x"]})
    assert (request.encoding, request.dimensions) == ("float", None)
    assert request.prompt_estimate == 3 + 1
    assert request.tokens is False
    tokens = parse_embedding_request({"model": "m", "input": [[7, 8, 9], [1]]})
    assert (tokens.prompt_estimate, tokens.tokens) == (4, True)


def test_unknown_fields_are_kept():
    body = {"model": "m", "input": "a", "input_type": "query", "encoding_format": "base64"}
    request = parse_embedding_request(body)
    assert request.body is body
    assert request.encoding == "base64"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"input": "a"}, "model"),
        ({"model": "m", "input": True}, "input"),
        ({"model": "m", "input": [True]}, "input"),
        ({"model": "m", "input": [[1, True]]}, "input"),
        ({"model": "m", "input": "a", "dimensions": True}, "dimensions"),
        ({"model": "m", "input": "a", "encoding_format": "float16"}, "encoding_format"),
    ],
)
def test_malformed_bodies_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as raised:
        parse_embedding_request(body)
    assert raised.value.param == param


def test_base64_is_openais_little_endian_float32():
    encoded = encode_vector([1.0, -0.5, 0.25])
    assert base64.b64decode(encoded) == struct.pack("<3f", 1.0, -0.5, 0.25)
    assert decode_vector(encoded) == [1.0, -0.5, 0.25]


@pytest.mark.parametrize("text", ["!!!not base64", base64.b64encode(b"12345").decode()])
def test_base64_that_is_not_float32s_is_refused(text):
    with pytest.raises(ValueError):
        decode_vector(text)


def test_shorten_keeps_the_head_at_unit_length():
    assert shorten([3.0, 4.0, 12.0], 2) == [0.6, 0.8]
    assert shorten([0.0, 0.0, 1.0], 2) == [0.0, 0.0]  # nothing to scale


@pytest.mark.parametrize("dimensions", [1, 2, 3, 4, 5, 6, 7, 9])
def test_base64_passes_through_unless_it_must_be_shortened(dimensions):
    vector = encode_vector([0.5] * dimensions)
    assert finish_vector(vector, "base64", None) is vector
    assert finish_vector(vector, "base64", dimensions) is vector
    if dimensions > 1:
        short = decode_vector(str(finish_vector(vector, "base64", dimensions - 1)))
        assert math.isclose(math.fsum(v * v for v in short), 1.0, rel_tol=1e-6)


def test_finish_vector_converts_both_ways():
    assert finish_vector([0.5, 0.25], "base64", None) == encode_vector([0.5, 0.25])
    assert finish_vector(encode_vector([0.5, 0.25]), "float", None) == [0.5, 0.25]
    assert finish_vector([3.0, 4.0, 1.0], "float", 2) == [0.6, 0.8]


@pytest.mark.parametrize("vector", [None, ["x", 1.0], {"a": 1}])
def test_malformed_upstream_vectors_are_refused(vector):
    with pytest.raises(ValueError):
        finish_vector(vector, "base64", 1)


NAN_BASE64 = base64.b64encode(struct.pack("<2f", math.nan, 1.0)).decode()


@pytest.mark.parametrize(
    "vector",
    [
        [1e300, 0.5],  # past float32's range: was an OverflowError (a 500) as base64
        [0.5, 10**400],
        NAN_BASE64,
        base64.b64encode(struct.pack("<2f", math.inf, 1.0)).decode(),
        [0.5, None],
        [0.5, [0.5]],
        [0.25] * (MAX_DIMENSIONS + 1),
        encode_vector([0.25] * (MAX_DIMENSIONS + 1)),
    ],
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_vectors_that_are_not_finite_float32s_are_refused_in_either_encoding(vector, encoding):
    """Even where the vector would pass through as it came (base64 to base64, numbers to
    float): a NaN becomes null in JSON, and a client's float32 decoder chokes on the rest."""
    with pytest.raises(ValueError):
        finish_vector(vector, encoding, None)


def test_a_vector_of_max_dimensions_passes():
    vector = [0.25] * MAX_DIMENSIONS
    assert finish_vector(vector, "float", None) is vector
