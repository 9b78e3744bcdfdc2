"""The OpenAI Embeddings wire format: request checks, vectors as floats or base64, shortening.

https://platform.openai.com/docs/api-reference/embeddings/create. `input` is a string, an array
of strings, an array of token ids or an array of token arrays; `encoding_format: "base64"` means
each vector as base64 of little-endian float32s, as OpenAI sends it (the official SDKs ask for it
by default and decode it themselves). Unknown fields are kept for OpenAI-compatible upstreams.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from callmissed.errors import InvalidRequest
from callmissed.token_bound import embedding_bound
from callmissed.token_estimate import estimate_embedding_tokens

__all__ = [
    "ENCODINGS",
    "MAX_DIMENSIONS",
    "MAX_INPUTS",
    "MAX_INPUT_TOKENS",
    "EmbeddingBatch",
    "EmbeddingRequest",
    "Vector",
    "decode_vector",
    "encode_vector",
    "finish_vector",
    "float32s",
    "parse_embedding_request",
    "shorten",
]

MAX_INPUTS = 2048  # OpenAI's own limit on the inputs of one request
# The longest vectors an upstream may send: four times the longest any model makes today
# (4,096: Qwen3-Embedding-8B, NV-Embed-v2). Longer ones are a broken or hostile upstream's.
MAX_DIMENSIONS = 16_384
MAX_INPUT_TOKENS = 300_000  # OpenAI's limit on one request's tokens, summed (here: estimated)
ENCODINGS = ("float", "base64")

Vector = list[float] | str  # floats, or base64 of little-endian float32s


@dataclass(slots=True)
class EmbeddingRequest:
    """A checked POST /v1/embeddings body."""

    model: str
    inputs: list[str] | list[list[int]]  # one item per vector asked for
    encoding: str  # "float" or "base64": what the client gets back
    dimensions: int | None
    body: dict[str, Any]  # the client's body, unknown fields included
    prompt_estimate: int  # the inputs' tokens, estimated (token_estimate.py)
    prompt_bound: int  # the most tokens they can be (token_bound.py): what is held

    @property
    def tokens(self) -> bool:
        """The inputs are token arrays rather than text."""
        return bool(self.inputs) and not isinstance(self.inputs[0], str)


@dataclass(slots=True)
class EmbeddingBatch:
    """One upstream answer: a vector per input, in input order, and what else it said."""

    vectors: list[Vector]
    prompt_tokens: int | None  # as the upstream counted them; None if it did not say
    envelope: dict[str, Any] = field(default_factory=dict)  # its other top-level fields


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    """Check a POST /v1/embeddings body; raise InvalidRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidRequest("'user' must be a string.", param="user")
    estimate = estimate_embedding_tokens(inputs)
    if estimate > MAX_INPUT_TOKENS:
        raise InvalidRequest(
            f"The inputs come to about {estimate} tokens (estimated, ~4 characters a token); "
            f"one request may have at most {MAX_INPUT_TOKENS}. Send them in several requests.",
            param="input",
        )
    bound = embedding_bound(inputs)
    return EmbeddingRequest(model, inputs, encoding, dimensions, body, estimate, bound)


_INPUT_SHAPE = (
    "'input' must be a string, an array of strings, an array of token ids (integers) "
    "or an array of token arrays."
)


def _inputs(value: Any) -> list[str] | list[list[int]]:
    """`input` as a list with one item per vector asked for."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be an empty string.", param="input")
        return [value]
    if not isinstance(value, list):
        raise InvalidRequest(_INPUT_SHAPE, param="input")
    if not value:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(value)} items; one request may have at most {MAX_INPUTS}.",
            param="input",
        )
    if all(isinstance(item, str) for item in value):
        return _texts(value)
    if all(_is_token(item) for item in value):
        return [value]  # one token array
    if all(isinstance(item, list) for item in value):
        return _token_arrays(value)
    raise InvalidRequest(_INPUT_SHAPE, param="input")


def _texts(texts: list[str]) -> list[str]:
    for position, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"'input[{position}]' must not be an empty string.", param="input")
    return texts


def _token_arrays(arrays: list[list[Any]]) -> list[list[int]]:
    for position, tokens in enumerate(arrays):
        if not tokens or not all(_is_token(token) for token in tokens):
            raise InvalidRequest(
                f"'input[{position}]' must be a non-empty array of token ids (integers >= 0).",
                param="input",
            )
    return arrays


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def encode_vector(values: Sequence[float]) -> str:
    """Floats as OpenAI's base64: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def decode_vector(text: str) -> list[float]:
    """OpenAI's base64 back to floats; ValueError unless it is whole float32s."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an embedding is not valid base64") from None
    if len(raw) % 4:
        raise ValueError("a base64 embedding is not a whole number of float32s")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def shorten(values: Sequence[float], dimensions: int) -> list[float]:
    """The first `dimensions` values, scaled back to unit length (what OpenAI does for
    `dimensions`, and what Matryoshka-trained models are made for)."""
    head = list(values[:dimensions])
    norm = math.sqrt(math.fsum(value * value for value in head))
    return [value / norm for value in head] if norm > 0 else head


def float32s(vector: Vector) -> array[float]:
    """An upstream's vector (numbers, or OpenAI's base64) as float32s; ValueError unless every
    value is a finite float32 and there are at most MAX_DIMENSIONS of them."""
    if isinstance(vector, str):
        try:
            raw = base64.b64decode(vector, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an embedding is not valid base64") from None
        if len(raw) % 4:
            raise ValueError("a base64 embedding is not a whole number of float32s")
        _check_length(len(raw) // 4)
        values = array("f")
        values.frombytes(raw)
        if sys.byteorder != "little":
            values.byteswap()
    elif isinstance(vector, list):
        _check_length(len(vector))
        try:
            values = array("f", vector)  # C speed; a value past float32's range becomes inf
        except (TypeError, OverflowError):
            raise ValueError("an embedding holds something other than numbers") from None
    else:
        raise ValueError("an embedding is neither an array of numbers nor base64")
    if not math.isfinite(sum(values)):  # one sum, not a test per value: any NaN or inf shows
        raise ValueError("an embedding holds a value that is not a finite float32")
    return values


def _check_length(dimensions: int) -> None:
    if dimensions > MAX_DIMENSIONS:
        raise ValueError(
            f"an embedding has {dimensions} dimensions; no model makes more than {MAX_DIMENSIONS}"
        )


def finish_vector(vector: Vector, encoding: str, shorten_to: int | None) -> Vector:
    """An upstream's vector as the client asked for it: shortened if asked, in its encoding.
    ValueError unless the upstream's vector is finite float32s (float32s() says how not)."""
    values = float32s(vector)
    if shorten_to is not None and len(values) > shorten_to:
        short = shorten(values, shorten_to)
        return encode_vector(short) if encoding == "base64" else short
    if isinstance(vector, str) == (encoding == "base64"):
        return vector  # already what the client wants, as the upstream wrote it
    return encode_vector(values) if encoding == "base64" else values.tolist()
