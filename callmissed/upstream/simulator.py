"""The in-process simulator upstream: answers `sim/...` models with realistic token timing.

It speaks the OpenAI-compatible wire format as bytes, exactly like a real server would, so the
whole relay runs unchanged; it only skips the network. Timing comes from each model's
`simulate` profile in the catalog (first-token and total times from the Getting Started page).
`SimulatorTransport` keeps the transport contract (contract.py), so the pool sends to it as to
any other upstream.
Embeddings are feature-hashed words: the same text always gets the same unit vector, and texts
that share words point the same way, so retrieval demos work offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from callmissed.errors import UpstreamError
from callmissed.formats.embeddings import encode_vector
from callmissed.providers import UpstreamRequest
from callmissed.settings import Settings, SimProfile
from callmissed.token_estimate import estimate_embedding_tokens
from callmissed.upstream.contract import Peer, Response

__all__ = [
    "MAX_SIM_DIMENSIONS",
    "SimulatedEmbeddings",
    "SimulatedResponse",
    "SimulatorTransport",
    "embed",
    "simulate",
    "simulate_embeddings",
]

MAX_SIM_DIMENSIONS = 8192

_ANSWER = """Quicksort picks a pivot element, partitions the array so that smaller elements
come before the pivot and larger ones after it, and then sorts the two partitions recursively;
on average it runs in O(n log n) time and sorts in place."""
_THINKING = "Let me think about what is being asked and answer briefly."
_TEXT = _ANSWER.split()
_THOUGHT = _THINKING.split()
_THINKING_SCALE = {"none": 0.0, "minimal": 0.25, "low": 0.5, "medium": 1.0, "high": 2.0}


class SimulatorTransport:
    """Answers chat and embeddings requests in-process, paced by each model's profile."""

    def __init__(self, settings: Settings, peer: Peer) -> None:
        self._peer = peer
        self._profiles: dict[str, SimProfile] = {
            route.upstream_model: model.simulate
            for model in settings.models.values()
            if model.simulate
            for route in model.routes
        }

    async def send(self, request: UpstreamRequest, method: str = "POST") -> Response:
        if method != "POST":
            raise UpstreamError(f"{self._peer} answers no {method}", provider=self._peer.name)
        if request.url.endswith("/embeddings"):
            return simulate_embeddings(request.body)
        profile = self._profiles.get(request.model)
        if profile is None:
            raise UpstreamError("the simulator has no such model", provider=self._peer.name)
        return simulate(profile, request.body)

    async def warm(self, url: str, count: int) -> None:
        pass  # no connections

    async def close(self) -> None:
        pass


class SimulatedResponse:
    """A contract.Response produced without a socket."""

    status = 200
    retry_after: float | None = None
    http_version = "in-process"
    connect_s: float | None = None  # no connection at all

    def __init__(self, profile: SimProfile, body: Mapping[str, Any]) -> None:
        self._profile = profile
        self._body = body
        self._id = f"chatcmpl-sim{time.monotonic_ns():x}"
        self._created = int(time.time())
        self._model = f"sim/{body.get('model', 'model')}"
        self._thinking, self._text, self._finish = _plan(profile, body)
        # The profile's times are for its whole default answer, so the gap between tokens is
        # fixed by it: an answer with fewer tokens (no thinking, a max_tokens cap) ends sooner.
        gaps = max(profile.tokens + profile.thinking_tokens - 1, 1)
        self._gap = max(profile.total_ms - profile.ttfb_ms, 0) / 1000 / gaps
        self._events: deque[tuple[float, bytes]] | None = None  # (wait first, event) to send

    @property
    def duration(self) -> float:
        """Seconds the whole answer takes: the first token's wait, then each token's share."""
        tokens = len(self._thinking) + len(self._text)
        return self._profile.ttfb_ms / 1000 + self._gap * max(tokens - 1, 0)

    async def read(self, limit: int) -> tuple[bytes, bool]:
        body = await self._completion()
        return body[:limit], len(body) > limit

    async def _completion(self) -> bytes:
        await asyncio.sleep(self.duration)
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(self._text)}
        if self._thinking:
            message["reasoning"] = " ".join(self._thinking)
        return orjson.dumps(
            {
                "id": self._id,
                "object": "chat.completion",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": self._finish,
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(),
            }
        )

    async def receive(self) -> bytes:
        if self._events is None:
            self._events = self.events()
        if not self._events:
            return b""
        wait, event = self._events.popleft()
        if wait:
            await asyncio.sleep(wait)
        return event

    def events(self) -> deque[tuple[float, bytes]]:
        """The streamed answer's events, each with the seconds to wait before it."""
        tokens = [("reasoning", word, not i) for i, word in enumerate(self._thinking)]
        tokens += [("content", word, not i) for i, word in enumerate(self._text)]
        role = self._chunk({"role": "assistant", "content": ""})
        events = deque([(self._profile.ttfb_ms / 1000, role)])
        for position, (field, word, first) in enumerate(tokens):
            text = word if first else " " + word  # each text starts without a space
            events.append((self._gap if position else 0.0, self._chunk({field: text})))
        events.append((0.0, self._chunk({}, finish_reason=self._finish)))
        if (self._body.get("stream_options") or {}).get("include_usage"):
            usage = self._frame({**self._envelope(), "choices": [], "usage": self._usage()})
            events.append((0.0, usage))
        events.append((0.0, b"data: [DONE]\n\n"))
        return events

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self._frame({**self._envelope(), "choices": [choice]})

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    @staticmethod
    def _frame(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _usage(self) -> dict[str, Any]:
        prompt = max(1, len(orjson.dumps(self._body.get("messages", []))) // 4)
        completion = len(self._thinking) + len(self._text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": len(self._thinking)},
        }


def simulate(profile: SimProfile, body: bytes) -> SimulatedResponse:
    return SimulatedResponse(profile, orjson.loads(body))


def _plan(profile: SimProfile, body: Mapping[str, Any]) -> tuple[list[str], list[str], str]:
    """The thinking and answer words to emit, and the finish reason, honouring max_tokens."""
    effort = body.get("reasoning_effort")
    scale = _THINKING_SCALE.get(effort, 1.0) if isinstance(effort, str) else 1.0
    thinking = _words(_THOUGHT, round(profile.thinking_tokens * scale))
    text = _words(_TEXT, profile.tokens)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(thinking) + len(text) > limit:
        thinking = thinking[:limit]
        text = text[: max(0, limit - len(thinking))]
        return thinking, text, "length"
    return thinking, text, "stop"


def _words(source: list[str], count: int) -> list[str]:
    return [source[i % len(source)] for i in range(count)]


class SimulatedEmbeddings:
    """An embeddings answer (or a 400 for an impossible size), made in-process."""

    retry_after: float | None = None
    http_version = "in-process"
    connect_s: float | None = None  # no connection at all

    def __init__(self, body: Mapping[str, Any]) -> None:
        dimensions = body.get("dimensions")
        if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_SIM_DIMENSIONS:
            self.status = 400
            message = f"dimensions must be between 1 and {MAX_SIM_DIMENSIONS}"
            self._body = orjson.dumps({"error": {"message": message, "type": "invalid_request"}})
            return
        self.status = 200
        inputs = body["input"]
        base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embed(item, dimensions)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode_vector(vector) if base64 else vector,
                }
            )
        tokens = estimate_embedding_tokens(inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": f"sim/{body.get('model', 'model')}",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._body = orjson.dumps(answer)

    async def read(self, limit: int) -> tuple[bytes, bool]:
        return self._body[:limit], len(self._body) > limit

    async def receive(self) -> bytes:
        body, self._body = self._body, b""
        return body

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def simulate_embeddings(body: bytes) -> SimulatedEmbeddings:
    return SimulatedEmbeddings(orjson.loads(body))


_WORD = re.compile(r"\w+")
_HITS = struct.Struct("<16I")  # one 64-byte hash per feature: sixteen signed hits


def embed(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector for a text (its lower-cased words) or token array (its token ids).

    Each feature adds a signed weight at one place in every power-of-two prefix of the vector
    and at four places anywhere in it, all chosen by its hash: texts that share words point the
    same way, and a prefix, shortened like a Matryoshka model's vector, is never empty."""
    if isinstance(item, str):
        features = [word.encode() for word in _WORD.findall(item.lower())] or [item.encode()]
    else:
        features = [b"#%d" % token for token in item]
    sizes = [1 << level for level in range(12) if 1 << level < dimensions]
    sizes += [dimensions] * (_HITS.size // 4 - len(sizes))
    values = [0.0] * dimensions
    for feature in features:
        hits = _HITS.unpack(hashlib.blake2b(feature).digest())
        for size, hit in zip(sizes, hits, strict=False):
            weight = 1.0 + (hit >> 22) / 1024  # [1, 2): exact cancellations are all but impossible
            values[(hit >> 1) % size] += weight if hit & 1 else -weight
    norm = math.sqrt(math.fsum(value * value for value in values))
    if norm == 0:  # every feature cancelled out: still a unit vector, still the same each time
        values[0], norm = 1.0, 1.0
    return [value / norm for value in values]
