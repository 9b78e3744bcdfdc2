"""Relay an upstream's own Responses API answer (OpenRouter's POST /responses), passed through.

Within the dialect nothing is translated: each streamed event goes on as the upstream framed its
data, one Chunk per event, with the text it carries counted for the meter; the answer's end
(`response.completed` or `response.incomplete`) finishes the stream and brings the usage, and
`response.failed` or `error` raises UpstreamError, so the edge ends the stream with an error
the SDK raises. The edge (api/responses.py) makes the few edits the route needs.
"""

from __future__ import annotations

from typing import Any

import orjson

from callmissed import failures
from callmissed.errors import UpstreamError
from callmissed.nesting import MAX_DEPTH, SHORTEST_TOO_DEEP, too_deep
from callmissed.providers import Provider
from callmissed.relay import ChatStream, Chunk, UpstreamAPI, malformed
from callmissed.sse import event_data
from callmissed.token_estimate import estimate_output_tokens
from callmissed.upstream import UpstreamResponse

__all__ = ["RESPONSES", "ResponsesStream", "read_response"]

_ENDS = frozenset({"response.completed", "response.incomplete"})
_FAILS = frozenset({"response.failed", "error"})


class ResponsesStream(ChatStream):
    """A Responses event stream, read as ChatStream reads chat chunks (the same meter, watchdog
    and close): each Chunk is one event's data, parsed, with `tokens` set, so no meter walks it."""

    async def start(self) -> None:
        """Wait for the first event that carries output (or ends the answer): until then,
        failover.py may still switch routes unseen."""
        while (batch := await anext(self._batches, None)) is not None:
            self._first += batch
            if any(chunk.tokens or chunk.json().get("type") in _ENDS for chunk in batch):
                return

    def _chunks(self, raw: bytes, chunks: list[Chunk]) -> None:
        for block in self._take(raw).split(b"\n\n"):
            data = event_data(block) if block else None
            if data is not None and data != b"[DONE]":
                chunks.append(self._event(data))

    def _event(self, data: bytes) -> Chunk:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise malformed(self._provider, "sent malformed JSON in its stream") from None
        if payload.__class__ is not dict:
            raise malformed(self._provider, "sent an event that is not an object")
        if len(data) >= SHORTEST_TOO_DEEP and too_deep(payload, len(data)):
            raise malformed(self._provider, f"sent JSON nested deeper than {MAX_DEPTH} levels")
        kind = payload.get("type")
        if kind in _FAILS:
            raise _failure(self._provider, payload)
        if kind in _ENDS:
            self.finished = self._done = True
            response = payload.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            self.usage = usage if isinstance(usage, dict) else None
        delta = payload.get("delta")
        tokens = estimate_output_tokens(delta) if isinstance(delta, str) else 0
        return Chunk(data, payload, tokens)


def _failure(provider: Provider, payload: dict[str, Any]) -> UpstreamError:
    """The error a `response.failed` or `error` event reports."""
    response = payload.get("response")
    error = response.get("error") if isinstance(response, dict) else payload.get("error")
    details = error if isinstance(error, dict) else payload
    message = details.get("message")
    text = str(message) if message else "the upstream failed while generating"
    return provider.make_error(502, text, None)


async def read_response(
    provider: Provider, response: UpstreamResponse, limit: int
) -> dict[str, Any]:
    """A whole Response object of at most `limit` bytes, raising if it failed, is longer or is
    not one."""
    try:
        body, more = await response.read(limit)
    finally:
        response.close()
    label = f"{provider.label} ({provider.name})"
    if more:
        message = f"{label} answered with more than {limit} bytes"
        raise failures.failure(failures.TOO_LARGE, message, provider=provider.name)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(provider, "answered with malformed JSON") from None
    if too_deep(answer, len(body)):
        raise malformed(provider, f"answered with JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
        error = provider.stream_error(answer) if isinstance(answer, dict) else None
        raise error or malformed(provider, "answered without output")
    if answer.get("status") == "failed":
        raise _failure(provider, {"response": answer})
    return answer


RESPONSES = UpstreamAPI(Provider.build_responses_request, read_response, ResponsesStream)
