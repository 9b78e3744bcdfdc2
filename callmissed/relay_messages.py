"""Relay an Anthropic Messages answer from an upstream that serves the API itself, passed through.

Within the dialect nothing is translated: each streamed event goes on as the upstream framed its
data, one Chunk per event (thinking blocks and their signatures, tool_use, cache figures and
event types this code does not know included), with the text it carries counted for the meter.
`message_start` brings the answer's id and input usage, `message_delta` the stop reason and the
output usage (the stream's usage is the two merged: what the key is billed for), `message_stop`
ends it; an `error` event raises UpstreamError, so the edge ends the stream with an error the
SDK raises. The edge (api/anthropic.py) makes the few edits the route needs.
"""

from __future__ import annotations

import functools
from typing import Any

from callmissed.providers import Provider, UpstreamRequest
from callmissed.relay import Chunk, EventStream, UpstreamAPI, read_whole
from callmissed.settings import ModelSettings, Route
from callmissed.token_estimate import estimate_output_tokens
from callmissed.upstream import UpstreamResponse

__all__ = ["MESSAGES", "MessagesStream", "messages_api", "read_message"]

# The delta fields whose text the model wrote (a signature_delta's is not output).
_DELTA_TEXT = ("text", "thinking", "partial_json")


class MessagesStream(EventStream):
    """A Messages event stream: one Chunk per event, its text counted."""

    def _event(self, data: bytes) -> Chunk:
        payload = self._load(data)
        kind = payload.get("type")
        tokens = 0
        if kind == "content_block_delta":
            delta = payload.get("delta")
            text = _delta_text(delta) if isinstance(delta, dict) else None
            tokens = estimate_output_tokens(text) if text else 0
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._merge_usage(message.get("usage"))
                answer_id = message.get("id")
                if isinstance(answer_id, str) and len(answer_id) <= 200:
                    self.upstream_id = answer_id
        elif kind == "message_delta":
            self._merge_usage(payload.get("usage"))
            self.finished = True
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            raise self._provider.event_error(payload)
        return Chunk(data, payload, tokens)

    def _merge_usage(self, usage: Any) -> None:
        """message_delta's figures over message_start's: output_tokens is cumulative there, and
        newer API versions repeat the input figures too."""
        if isinstance(usage, dict):
            merged = dict(self.usage or {})
            merged.update((key, value) for key, value in usage.items() if value is not None)
            self.usage = merged


def _delta_text(delta: dict[str, Any]) -> str | None:
    for field in _DELTA_TEXT:
        text = delta.get(field)
        if isinstance(text, str):
            return text
    return None


async def read_message(
    provider: Provider, response: UpstreamResponse, limit: int
) -> dict[str, Any]:
    """A whole Message of at most `limit` bytes, raising if it is longer, an error, or none."""
    return provider.parse_message(await read_whole(provider, response, limit))


def messages_api(beta: str | None = None) -> UpstreamAPI:
    """The Messages API, asked for the client's `anthropic-beta` features if it named any."""
    if beta is None:
        return MESSAGES
    return UpstreamAPI(functools.partial(_build, beta=beta), read_message, MessagesStream)


def _build(
    provider: Provider,
    body: dict[str, Any],
    route: Route,
    model: ModelSettings,
    beta: str | None = None,
) -> UpstreamRequest:
    return provider.build_messages_request(body, route, model, beta)


MESSAGES = UpstreamAPI(_build, read_message, MessagesStream)
