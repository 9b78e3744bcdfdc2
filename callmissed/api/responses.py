"""The Responses API edge: POST /v1/responses, GET and DELETE /v1/responses/{id}, and
GET /v1/responses/{id}/input_items.

A thin edge over the same gateway use-cases as chat (keys, limits, credits, routing, fallback,
hedging, keep-alives, cancel-on-disconnect). A model every route of which serves the Responses
API itself (OpenRouter) gets the client's body passed through, with the route's edits
(formats/responses_passthrough.py); any other is translated to chat and back
(formats/responses.py, formats/responses_output.py). Stored responses are history.py's.
A failure after the first byte ends the stream with `response.failed` and an `error` event,
which the SDKs raise.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from callmissed.accounting.pricing import format_credits
from callmissed.auth import Principal
from callmissed.edge.web import Request, Response, StreamResponse, json_response
from callmissed.errors import GatewayError, InvalidRequest, to_openai
from callmissed.formats.responses import (
    ResponseRequest,
    build_chat,
    check_for_chat,
    new_id,
    parse_response_request,
)
from callmissed.formats.responses_output import ResponseEncoder, event
from callmissed.formats.responses_passthrough import PassThroughEditor
from callmissed.gateway import Gateway
from callmissed.history import History
from callmissed.keepalive import InBand, in_band_error
from callmissed.relay import CHAT_COMPLETIONS, ChatStream, UpstreamAPI
from callmissed.relay_responses import RESPONSES
from callmissed.tags import request_tags

__all__ = ["create_response", "delete_response", "list_input_items", "retrieve_response"]

log = logging.getLogger("callmissed")

_PREFIX = "/v1/responses/"


async def create_response(
    gateway: Gateway, history: History, request: Request
) -> Response | StreamResponse:
    principal = request.key
    ask = parse_response_request(request.json())
    _, targets = gateway.router.resolve(ask.model)
    passed = all(target.provider.serves_responses for target in targets)
    if not passed:
        check_for_chat(ask)
    earlier: list[dict[str, Any]] = []
    if ask.previous_response_id is not None:
        earlier = await history.conversation(principal.key_id, ask.previous_response_id)
    save = _saver(history, principal, earlier + ask.items) if ask.store else None
    if passed:
        return await _pass_through(gateway, request, principal, ask, earlier, save)
    return await _translate(gateway, request, principal, ask, earlier, save)


Save = Callable[[dict[str, Any]], Awaitable[object]]


def _saver(history: History, principal: Principal, items: list[dict[str, Any]]) -> Save:
    """Stores a finished Response with the items it answered, for the key."""
    return functools.partial(history.save, principal.key_id, items=items)


# Translated: chat upstreams --------------------------------------------------------------


async def _translate(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    ask: ResponseRequest,
    earlier: list[dict[str, Any]],
    save: Save | None,
) -> Response | StreamResponse:
    chat = build_chat(ask, earlier)
    encoder = ResponseEncoder(ask)
    tags = request_tags(request.headers, ask.body)
    if not ask.stream:
        completion, info = await gateway.complete(
            principal, chat, request_id=request.request_id, tags=tags
        )
        encoder.start()
        encoder.feed(_as_chunk(completion))
        encoder.finish(completion.get("usage"))
        assert encoder.response is not None
        if save is not None:
            await save(encoder.response)
        return json_response(encoder.response, headers=info.headers())
    opened = await _open(gateway, request, principal, chat, CHAT_COMPLETIONS, tags)
    if isinstance(opened, StreamResponse):
        return opened
    stream, headers = opened
    body = _aiter_translated(stream, encoder, save, request.request_id)
    return StreamResponse(body, headers, stream.close)


def _as_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """A whole chat.completion as one chunk, so the encoder builds its output as for a stream."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = dict(choice.get("message") or {})
    calls = message.get("tool_calls") or []
    message["tool_calls"] = [
        {**call, "index": position} for position, call in enumerate(calls) if isinstance(call, dict)
    ]
    return {
        "choices": [{"index": 0, "delta": message, "finish_reason": choice.get("finish_reason")}]
    }


async def _aiter_translated(
    stream: ChatStream, encoder: ResponseEncoder, save: Save | None, request_id: str
) -> AsyncIterator[bytes]:
    head = encoder.start()  # goes out with the first chunks' events, in one write
    usage: Any = None
    ended = False
    try:
        async for batch in stream.aiter_batches():
            events = []
            for chunk in batch:
                parsed = chunk.json()
                if parsed.get("usage") is not None:
                    usage = parsed["usage"]  # priced by the charge on its way here
                events.append(encoder.feed(parsed))
            # The read that brought the upstream's [DONE]: the answer ends in the same write.
            ended = stream.complete
            if ended:
                events.append(await _finish(encoder, usage, save))
            if head or any(events):
                yield head + b"".join(events)
                head = b""
        if not ended:  # [DONE] came alone, or never: stream.usage has what the upstream said
            yield head + await _finish(encoder, usage or stream.usage, save)
    except GatewayError as exc:
        yield head + encoder.fail(exc.code, exc.message)
    except Exception:
        log.exception("stream failed (%s)", request_id)
        yield head + encoder.fail("internal_error", f"Internal error ({request_id}).")


async def _finish(encoder: ResponseEncoder, usage: Any, save: Save | None) -> bytes:
    """The last events; the response is stored before they go, so a continuation that follows
    them at once finds it, and the last one says whether it was (`store`)."""
    events = encoder.conclude(usage)
    if encoder.response is not None and save is not None:
        await save(encoder.response)
    return events + encoder.final_event()


# Passed through: upstreams that serve the Responses API ----------------------------------


async def _pass_through(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    ask: ResponseRequest,
    earlier: list[dict[str, Any]],
    save: Save | None,
) -> Response | StreamResponse:
    body = _upstream_body(ask, earlier + ask.items)
    model, targets = gateway.router.resolve(ask.model)
    book = gateway.accounting.prices
    billing = (book.price(model) or book.unpriced(model)).route(targets[0].route)

    def price(
        usage: dict[str, Any],
    ) -> float | None:  # as the charge prices it (accounting/credits.py)
        return format_credits(book.bill(billing, usage)[1])

    editor = PassThroughEditor(ask, new_id("resp_"), price)
    tags = request_tags(request.headers, ask.body)
    if not ask.stream:
        answer, info = await gateway.complete(
            principal, body, request_id=request.request_id, api=RESPONSES, tags=tags
        )
        cost = (answer.get("usage") or {}).get("cost")  # the charge priced it
        response = editor.edit(answer, final=True)
        if cost is not None:
            response["usage"]["cost"] = cost
        if save is not None:
            await save(response)
        return json_response(response, headers=info.headers())
    opened = await _open(gateway, request, principal, body, RESPONSES, tags)
    if isinstance(opened, StreamResponse):
        return opened
    stream, headers = opened
    events = _aiter_passed(stream, editor, save, request.request_id)
    return StreamResponse(events, headers, stream.close)


def _upstream_body(ask: ResponseRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The client's body with the edits the route needs: the conversation so far in place of
    previous_response_id, nothing stored upstream (CallMissed stores it), and reasoning.effort
    out where the gateway's reasoning matrix reads it (the provider puts it back)."""
    body = dict(ask.body)
    if ask.previous_response_id is not None:
        del body["previous_response_id"]
        body["input"] = items
    body["store"] = False
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and "effort" in reasoning:
        body["reasoning"] = {k: v for k, v in reasoning.items() if k != "effort"}
        body["reasoning_effort"] = reasoning["effort"]
    return body


async def _aiter_passed(
    stream: ChatStream, editor: PassThroughEditor, save: Save | None, request_id: str
) -> AsyncIterator[bytes]:
    try:
        async for batch in stream.aiter_batches():
            events = []
            for chunk in batch:
                payload = chunk.json()
                if save is not None and (final := editor.ends(payload)) is not None:
                    await save(final)  # before the end is written (see _finish)
                events.append(editor.feed(chunk.data, payload))
            yield b"".join(events)
    except GatewayError as exc:
        yield editor.fail(exc.code, exc.message)
    except Exception:
        log.exception("stream failed (%s)", request_id)
        yield editor.fail("internal_error", f"Internal error ({request_id}).")


# Shared ----------------------------------------------------------------------------------


async def _open(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    body: dict[str, Any],
    api: UpstreamAPI,
    tags: tuple[str, ...],
) -> tuple[ChatStream, list[tuple[bytes, bytes]]] | StreamResponse:
    """The stream, started (usage asked for: the Response reports it), and its headers; or,
    if it failed after keep-alives committed the 200, a StreamResponse with the error event."""
    keepalive = gateway.keepalive(request.start_stream, [])
    opening = gateway.open_stream(
        principal, body, True, request_id=request.request_id, api=api, tags=tags
    )
    try:
        stream, info = await keepalive.run(opening)
    except InBand as failed:
        return StreamResponse(in_band_error(failed.error, _error_event, request.request_id))
    return stream, [] if keepalive.started else info.headers()


def _error_event(exc: GatewayError) -> bytes:
    """An `error` event for a failure before any Response existed (see ResponseEncoder.fail)."""
    _, payload = to_openai(exc)
    error = payload["error"]
    flat = {"type": "error", "code": error["code"], "message": error["message"]}
    return event({**flat, "param": error["param"], "sequence_number": 0, "error": error})


# Stored responses ------------------------------------------------------------------------


async def retrieve_response(gateway: Gateway, history: History, request: Request) -> StreamResponse:
    """GET /v1/responses/{id} and GET /v1/responses/{id}/input_items."""
    principal = request.key
    response_id, _, rest = request.path.removeprefix(_PREFIX).partition("/")
    if rest == "input_items":
        return await list_input_items(history, principal, response_id, request.query)
    if rest:
        raise InvalidRequest(f"There is no endpoint at {request.path}.")
    stored = await history.load(principal.key_id, response_id)
    return _stored_body(history, principal, stored.response.encode())


_PIECE = 64 * 1024  # a stored body goes out in pieces this size, so the write gate can hold it


def _stored_body(history: History, principal: Principal, body: bytes) -> StreamResponse:
    """A stored response's JSON `body` as an answer that a client who stops reading holds
    back (the write gate) and that counts against its key's reads in flight (Readers)."""
    done = history.readers.take(principal.key_id, len(body))
    length = [(b"content-length", str(len(body)).encode())]
    return StreamResponse(_pieces(body), length, done, b"application/json")


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(body), _PIECE):
        yield bytes(view[start : start + _PIECE])


async def delete_response(gateway: Gateway, history: History, request: Request) -> Response:
    principal = request.key
    response_id = request.path.removeprefix(_PREFIX)
    await history.delete(principal.key_id, response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(
    history: History, principal: Principal, response_id: str, query: str
) -> StreamResponse:
    """A page of the items the response answered, newest first unless `order=asc`, as OpenAI
    lists them (`limit` 1-100, default 20; `after` an item id)."""
    stored = await history.load(principal.key_id, response_id)
    items: list[dict[str, Any]] = orjson.loads(stored.input_items)
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    if params.get("order", "desc") != "asc":
        items.reverse()
    after = params.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = _limit(params.get("limit"))
    page = items[:limit]
    listing = {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > limit,
    }
    return _stored_body(history, principal, orjson.dumps(listing))


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    # isdigit() alone passes '²', which int() refuses: ASCII digits only.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 100:
        raise InvalidRequest("'limit' must be an integer between 1 and 100.", param="limit")
    return int(value)
