"""A TLS upstream that speaks HTTP/2, served by granian in its own process.

It answers every chat completion with "Hello over <http version>", so a test can see which
protocol the gateway used to reach it; model "h2-bomb" gets a gzip bomb instead, and
`GET …/models` an OpenRouter-shaped price list (in several body frames) that prices its one model.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes.hostile import deflate_bomb


def _frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-h2",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "h2-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _models(send: Any) -> None:
    pricing = {"prompt": "0.000001", "completion": "0.000002"}
    listing = orjson.dumps({"data": [{"id": "h2-model", "pricing": pricing}]})
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for start in range(0, len(listing), 16):
        await send(
            {"type": "http.response.body", "body": listing[start : start + 16], "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET" and scope["path"].endswith("/models"):
        await _models(send)
        return
    if scope["method"] == "GET":  # health probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    text = f"Hello over HTTP/{scope['http_version']}"
    request = orjson.loads(body)
    stream = request.get("stream")
    if request.get("model") == "h2-bomb":  # gzip, ~40 KB on the wire, 40 MiB inflated
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": deflate_bomb("h2-bomb", wbits=31)})
        return
    if not stream:
        answer = {
            "id": "chatcmpl-h2",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "h2-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for frame in (
        _frame({"role": "assistant", "content": ""}),
        _frame({"content": text}),
        _frame({}, "stop"),
        b"data: [DONE]\n\n",
    ):
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
