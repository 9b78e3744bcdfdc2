"""The Anthropic Messages edge: POST /v1/messages and POST /v1/messages/count_tokens.

A thin edge: the key (`x-api-key` or `Authorization: Bearer`) was checked by web.App before the
body was read. A model every route of which serves the Messages API itself (providers/
anthropic.py) gets the client's body passed through (relay_messages.py), with the route's model
id, and its answer back with the model name the client asked for; any other is translated with
formats/anthropic*.py and handed, as an OpenAI-format body, to the same gateway use-cases as the
OpenAI edge. Either way keys, routing, credits and usage are one path. Framing follows
docs/anthropic.md (Streaming): `event:` + `data:` on every event, and a failure after the first
byte goes out as `event: error`, which the SDK raises. `anthropic-version` is accepted and not
needed. A first token slow to come commits the stream early, with `: keep-alive` comments
(keepalive.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from callmissed.edge.web import Request, Response, StreamResponse, error_response, json_response
from callmissed.errors import GatewayError, to_anthropic
from callmissed.formats.anthropic import check_passthrough, parse_message_request
from callmissed.formats.anthropic_message import MessageStreamEncoder, build_message
from callmissed.gateway import Gateway
from callmissed.keepalive import InBand, in_band_error
from callmissed.relay import ChatStream
from callmissed.relay_messages import messages_api
from callmissed.tags import request_tags
from callmissed.timing import RequestTrace
from callmissed.token_estimate import estimate_input_tokens

__all__ = ["count_tokens", "create_message"]

log = logging.getLogger("callmissed")


async def create_message(gateway: Gateway, request: Request) -> Response | StreamResponse:
    trace = gateway.observer.begin(request.request_id, request.headers, request.path)
    try:
        return await _create(gateway, request, trace)
    except GatewayError as exc:
        gateway.observer.failed(trace, exc)
        response = error_response(exc, "anthropic", request.request_id)
        response.headers.append((b"server-timing", trace.server_timing(total=True)))
        return response


async def _create(
    gateway: Gateway, request: Request, trace: RequestTrace
) -> Response | StreamResponse:
    principal = request.key
    trace.key_name = principal.name
    body = request.json()
    tags = request_tags(request.headers, body)
    if _serves_messages(gateway, body):
        return await _pass_through(gateway, request, body, trace, tags)
    message = parse_message_request(body)
    headers = [(b"request-id", request.request_id.encode())]
    if not message.stream:
        completion, info = await gateway.complete(principal, message.chat, trace=trace, tags=tags)
        headers += [*info.headers(), (b"server-timing", trace.server_timing(total=True))]
        answer = build_message(completion, message, info.prompt_estimate)
        return json_response(answer, headers=headers)
    request_id = request.request_id
    keepalive = gateway.keepalive(request.start_stream, headers)
    opening = gateway.open_stream(principal, message.chat, False, trace=trace, tags=tags)
    try:
        stream, info = await keepalive.run(opening)
    except InBand as failed:
        gateway.observer.failed(trace, failed.error)
        return StreamResponse(in_band_error(failed.error, _error_event, request_id))
    if not keepalive.started:  # else the headers went out with the first comment
        headers += [*info.headers(), (b"server-timing", trace.server_timing(total=False))]
    encoder = MessageStreamEncoder(message, info.prompt_estimate)
    events = _aiter_events(stream, encoder, trace)
    return StreamResponse(events, headers, stream.close)


def _serves_messages(gateway: Gateway, body: Any) -> bool:
    """Whether every route of the body's model serves the Messages API itself."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return False  # parse_message_request says what is wrong
    _, targets = gateway.router.resolve(model)
    return all(target.provider.serves_messages for target in targets)


async def _pass_through(
    gateway: Gateway,
    request: Request,
    body: dict[str, Any],
    trace: RequestTrace,
    tags: tuple[str, ...],
) -> Response | StreamResponse:
    """The client's body (and `anthropic-beta`) to an upstream that speaks Messages; its answer
    back as it came, with the model named as the client named it."""
    principal, name = request.key, body["model"]
    headers = [(b"request-id", request.request_id.encode())]
    api = messages_api(request.headers.get("anthropic-beta"))
    if not check_passthrough(body):
        answer, info = await gateway.complete(principal, body, trace=trace, api=api, tags=tags)
        headers += [*info.headers(), (b"server-timing", trace.server_timing(total=True))]
        return json_response({**answer, "model": name}, headers=headers)
    keepalive = gateway.keepalive(request.start_stream, headers)
    opening = gateway.open_stream(principal, body, True, trace=trace, api=api, tags=tags)
    try:
        stream, info = await keepalive.run(opening)
    except InBand as failed:
        gateway.observer.failed(trace, failed.error)
        return StreamResponse(in_band_error(failed.error, _error_event, request.request_id))
    if not keepalive.started:  # else the headers went out with the first comment
        headers += [*info.headers(), (b"server-timing", trace.server_timing(total=False))]
    return StreamResponse(_aiter_passed(stream, name, trace), headers, stream.close)


async def _aiter_passed(stream: ChatStream, name: str, trace: RequestTrace) -> AsyncIterator[bytes]:
    """Each event as the upstream sent its data, but message_start (the model's name) and
    message_delta (CallMissed's timings, as `x_callmissed`)."""
    try:
        async for batch in stream.aiter_batches():
            events = []
            for chunk in batch:
                payload = chunk.json()
                kind = payload.get("type")
                data = chunk.data
                if kind == "message_start" and isinstance(payload.get("message"), dict):
                    payload["message"]["model"] = name
                    data = orjson.dumps(payload)
                elif kind == "message_delta":
                    data = orjson.dumps({**payload, "x_callmissed": trace.stream_extra()})
                label = kind.encode() if isinstance(kind, str) else b"message"
                events.append(b"event: " + label + b"\ndata: " + data + b"\n\n")
            yield b"".join(events)
    except GatewayError as exc:
        yield _error_event(exc)
    except Exception:
        log.exception("stream failed (%s)", trace.request_id)
        yield _error_event(GatewayError(f"Internal error ({trace.request_id})."))


async def count_tokens(gateway: Gateway, request: Request) -> Response:
    """An estimate (token_estimate.py), marked as one; the model must exist, nothing is billed."""
    message = parse_message_request(request.json(), count_only=True)
    gateway.router.model(message.model)
    headers = [(b"request-id", request.request_id.encode()), (b"x-callmissed-estimate", b"true")]
    return json_response({"input_tokens": estimate_input_tokens(message.chat)}, headers=headers)


async def _aiter_events(
    stream: ChatStream, encoder: MessageStreamEncoder, trace: RequestTrace
) -> AsyncIterator[bytes]:
    request_id = trace.request_id
    # message_start goes out with the first chunks' events, in one write.
    head = encoder.start()
    complete = False
    try:
        async for batch in stream.aiter_batches():
            events = b"".join([encoder.feed(chunk.json()) for chunk in batch])
            # The read that brought the upstream's [DONE]: the message ends in the same write.
            complete = stream.complete
            if complete:
                events += encoder.finish(stream.usage, trace.stream_extra())
            if head or events:
                yield head + events
                head = b""
    except GatewayError as exc:
        yield head + _error_event(exc)
        return
    except Exception:
        log.exception("stream failed (%s)", request_id)
        yield head + _error_event(GatewayError(f"Internal error ({request_id})."))
        return
    # ChatStream.usage holds the upstream's usage even though the chunk was not passed on.
    if not complete:
        yield head + encoder.finish(stream.usage, trace.stream_extra())


def _error_event(exc: GatewayError) -> bytes:
    _, payload = to_anthropic(exc)
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
