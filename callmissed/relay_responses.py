"""Relay an upstream's own Responses API answer (OpenRouter's POST /responses), passed through.

Within the dialect nothing is translated: each streamed event goes on as the upstream framed its
data, one Chunk per event, with the text it carries counted for the meter; the answer's end
(`response.completed` or `response.incomplete`) finishes the stream and brings the usage, and
`response.failed` or `error` raises UpstreamError, so the edge ends the stream with an error
the SDK raises. The edge (api/responses.py) makes the few edits the route needs.
"""

from __future__ import annotations

from typing import Any

from callmissed.errors import UpstreamError
from callmissed.providers import Provider, UpstreamRequest
from callmissed.relay import Chunk, EventStream, UpstreamAPI, read_whole
from callmissed.settings import ModelSettings, Route
from callmissed.token_estimate import estimate_output_tokens
from callmissed.upstream import UpstreamResponse

__all__ = ["RESPONSES", "ResponsesStream", "read_response"]

_ENDS = frozenset({"response.completed", "response.incomplete"})
_FAILS = frozenset({"response.failed", "error"})


class ResponsesStream(EventStream):
    """A Responses event stream: one Chunk per event, its text counted."""

    def _event(self, data: bytes) -> Chunk:
        payload = self._load(data)
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
    answer = provider.load_answer(await read_whole(provider, response, limit))
    if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
        error = provider.stream_error(answer) if isinstance(answer, dict) else None
        raise error or provider.malformed("answered without output")
    if answer.get("status") == "failed":
        raise _failure(provider, {"response": answer})
    return answer


def _build(
    provider: Provider, body: dict[str, Any], route: Route, model: ModelSettings
) -> UpstreamRequest:
    return provider.build_responses_request(body, route, model)


RESPONSES = UpstreamAPI(_build, read_response, ResponsesStream)
