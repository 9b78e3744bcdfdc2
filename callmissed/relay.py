"""Relay one upstream answer to the client: normalised OpenAI chunks, usage captured as it passes.

A chunk is decoded only when its bytes show it may need an edit (formats.openai.needs_normalising);
everything else is forwarded as the upstream sent it. A stream that errors or ends before its
finish reason raises UpstreamError, so every API edge can end it with an error the SDK raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from callmissed.errors import UpstreamError
from callmissed.formats.openai import (
    ChunkNormaliser,
    is_plain_content,
    needs_normalising,
    normalise_completion,
)
from callmissed.providers import Provider
from callmissed.sse import SSEDecoder
from callmissed.upstream import UpstreamResponse

__all__ = ["ChatStream", "Chunk", "read_completion"]

_DONE = b"[DONE]"


@dataclass(slots=True)
class Chunk:
    """One chat.completion.chunk, as JSON bytes ready to forward, parsed if we had to."""

    data: bytes
    parsed: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        if self.parsed is None:
            self.parsed = orjson.loads(self.data)
        return self.parsed


class ChatStream:
    """An upstream stream of chat.completion chunks. Iterate `aiter_batches()` once; close()."""

    def __init__(self, provider: Provider, response: UpstreamResponse, include_usage: bool) -> None:
        self._provider = provider
        self._response = response
        self._include_usage = include_usage
        self._normaliser = ChunkNormaliser()
        self._decoder = SSEDecoder()
        self._done = False
        self.finished = False  # a finish_reason was seen
        self.usage: dict[str, Any] | None = None
        self.chunks_delivered = 0
        self._batches = self._aiter_upstream()
        self._first: list[Chunk] = []

    async def start(self) -> None:
        """Wait for the first chunks, so that an early failure can still be an HTTP error."""
        self._first = await anext(self._batches, [])

    async def aiter_batches(self) -> AsyncIterator[list[Chunk]]:
        """The chunks of each upstream read, together, so the edge can write them at once."""
        if self._first:
            yield self._first
        async for batch in self._batches:
            yield batch

    async def _aiter_upstream(self) -> AsyncIterator[list[Chunk]]:
        try:
            async for raw in self._response.aiter_bytes():
                batch = [
                    chunk
                    for event in self._decoder.feed(raw)
                    if (chunk := self._accept(event.data))
                ]
                if batch:
                    self.chunks_delivered += len(batch)
                    yield batch
                if self._done:
                    return
        finally:
            self.close()
        if not self.finished:
            label = f"{self._provider.label} ({self._provider.name})"
            raise UpstreamError(
                f"{label} ended the stream before it finished", provider=self._provider.name
            )

    def close(self) -> None:
        self._response.close()

    def _accept(self, data: bytes) -> Chunk | None:
        if data == _DONE:
            self._done = True
            return None
        try:
            # Parsing every chunk costs ~1 us and guarantees the client never gets broken JSON.
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"{self._provider.label} ({self._provider.name}) sent malformed JSON in its stream",
                provider=self._provider.name,
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamError("the upstream sent a chunk that is not an object")
        if is_plain_content(chunk) or not needs_normalising(data):
            return Chunk(data, chunk)
        error = self._provider.stream_error(chunk)
        if error is not None:
            raise error
        return self._edit(chunk)

    def _edit(self, chunk: dict[str, Any]) -> Chunk | None:
        self._normaliser.fix(chunk)
        choices = chunk.get("choices")
        if choices and any(choice.get("finish_reason") for choice in choices):
            self.finished = True
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
            if not self._include_usage:
                if not choices:
                    return None
                del chunk["usage"]
        if choices is None:
            chunk["choices"] = []
        return Chunk(orjson.dumps(chunk), chunk)


async def read_completion(provider: Provider, response: UpstreamResponse) -> dict[str, Any]:
    """Read a non-streamed chat.completion, raising if it is an error in disguise."""
    body = await response.read()
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            f"{provider.label} ({provider.name}) answered with malformed JSON",
            provider=provider.name,
        ) from None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        error = provider.stream_error(completion) if isinstance(completion, dict) else None
        raise error or UpstreamError(
            f"{provider.label} ({provider.name}) answered without choices", provider=provider.name
        )
    error = provider.stream_error(completion)
    if error is not None:
        raise error
    normalise_completion(completion)
    return completion
