"""A fake LLM upstream: a real aiohttp server on 127.0.0.1 speaking five dialects.

Paths choose the dialect, as the real providers' base URLs would:
  /client/v4/accounts/{account}/ai/v1/chat/completions   Cloudflare Workers AI (v4 error envelope)
  /openrouter/api/v1/chat/completions                     OpenRouter (numeric error codes,
                                                           `: OPENROUTER PROCESSING` comments,
                                                           usage.cost; openrouter.py)
  /openrouter/api/v1/models                               OpenRouter's model list, with prices
  /sarvam/v1/chat/completions                             Sarvam AI
  /local/v1/chat/completions                              any OpenAI-compatible server
  /anthropic/v1/messages                                  Anthropic's Messages API
                                                           (tests/fakes/anthropic_upstream.py)
  /openrouter/api/v1/responses                            OpenRouter's Responses API
                                                           (tests/fakes/responses_upstream.py)
  .../ai/run/{model}, .../embeddings                      embeddings (tests/fakes/embeddings.py)

The upstream model name picks the behaviour (see BEHAVIOURS); every request is recorded in
`requests` so tests can assert exactly what an upstream received.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openrouter import OpenRouterSide, bill_completion, bill_listed, metered
from tests.fakes.server import serve_in_thread


@dataclass
class Received:
    dialect: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)  # when a streaming client went away
    openrouter: OpenRouterSide = field(default_factory=OpenRouterSide)
    gate: threading.Event = field(default_factory=threading.Event)  # "gated" waits for it

    def last(self, model: str | None = None) -> Received:
        for received in reversed(self.requests):
            if model is None or received.body.get("model") == model:
                return received
        raise AssertionError(f"the upstream received no request for {model!r}")


def _dialect(path: str) -> str:
    if path.startswith("/client/v4/"):
        return "cloudflare"
    return path.split("/")[1]


def sse_chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(prompt: int = 5, completion: int = 6, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


# What "cached" reports, as OpenRouter does for a model that caches prompts: of 1000 prompt
# tokens, 600 read from the cache and 200 written to it.
CACHED_USAGE = {
    **_usage(prompt=1000),
    "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 200, "audio_tokens": 0},
}


def _usage_chunk(model: str, usage: dict[str, Any] | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": usage or _usage(),
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _completion(model: str, message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(),
    }


def _error_response(dialect: str, status: int, message: str, code: int = 0) -> web.Response:
    if dialect == "cloudflare":
        payload: dict[str, Any] = {
            "result": None,
            "success": False,
            "errors": [{"code": code or 5006, "message": message}],
            "messages": [],
        }
    elif dialect == "openrouter":
        payload = {"error": {"code": status, "message": message, "metadata": {}}, "user_id": None}
    else:
        payload = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    headers = {"retry-after": "1"} if status == 429 else {}
    return web.json_response(payload, status=status, headers=headers)


FAKE = web.AppKey("fake", FakeUpstream)
Script = Callable[[str, dict[str, Any]], list[bytes | float]]


def _hello(model: str, body: dict[str, Any]) -> list[bytes | float]:
    frames: list[bytes | float] = [
        sse_chunk(model, {"role": "assistant", "content": ""}),
        sse_chunk(model, {"content": "Hello"}),
        sse_chunk(model, {"content": " world"}),
        sse_chunk(model, {}, "stop"),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        frames.append(_usage_chunk(model))
    return [*frames, b"data: [DONE]\n\n"]


def _tools(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """Workers AI style: object arguments, repeated name, then the null-finalisation delta."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    return [
        sse_chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]}),
        sse_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        sse_chunk(
            model,
            {
                "tool_calls": [
                    {"index": 0, "function": {"name": "get_weather", "arguments": ' "Paris"}'}}
                ]
            },
        ),
        sse_chunk(model, {"tool_calls": [{"id": None, "type": None, "function": {"name": None}}]}),
        sse_chunk(model, {}, "tool_calls"),
        _usage_chunk(model),
        b"data: [DONE]\n\n",
    ]


def _reasoning(model: str, body: dict[str, Any]) -> list[bytes | float]:
    return [
        sse_chunk(model, {"role": "assistant", "content": ""}),
        sse_chunk(model, {"reasoning_content": "Two plus two"}),
        sse_chunk(model, {"reasoning_content": " is four."}),
        sse_chunk(model, {"content": "4"}),
        sse_chunk(model, {}, "stop"),
        _usage_chunk(model, _usage(completion=9, reasoning=7)),
        b"data: [DONE]\n\n",
    ]


def _processing(model: str, body: dict[str, Any]) -> list[bytes | float]:
    return [
        b": OPENROUTER PROCESSING\n\n",
        0.01,
        b": OPENROUTER PROCESSING\n\n",
        *_hello(model, body),
    ]


def _drop_after_2(model: str, body: dict[str, Any]) -> list[bytes | float]:
    return [*_hello(model, body)[:2], 0.05, b"DROP"]


def _gated(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """The first token, then nothing until the test opens `FakeUpstream.gate`, then the rest."""
    frames = _hello(model, body)
    return [*frames[:2], b"GATE", *frames[2:]]


def _cached(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """Hello world, and usage with cache reads and writes, whether asked for or not."""
    return [*_hello(model, {})[:-1], _usage_chunk(model, CACHED_USAGE), b"data: [DONE]\n\n"]


def _midstream_error(model: str, body: dict[str, Any]) -> list[bytes | float]:
    error = {"code": 502, "message": "Provider returned error", "metadata": {}}
    return [
        *_hello(model, body)[:2],
        0.05,
        sse_chunk(model, {"content": ""}, "error", error=error, provider="Fake"),
    ]


def _error_with_content(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """The first tokens and an error chunk in one write, so the gateway reads them together."""
    error = {"code": 502, "message": "Provider returned error", "metadata": {}}
    failure = sse_chunk(model, {"content": ""}, "error", error=error, provider="Fake")
    return [b"".join([*_hello(model, body)[:2], failure])]  # type: ignore[list-item]


def _first_chunk_error(model: str, body: dict[str, Any]) -> list[bytes | float]:
    error = {"code": 429, "message": "Rate limit exceeded", "metadata": {}}
    return [sse_chunk(model, {"content": ""}, "error", error=error)]


def _no_finish(model: str, body: dict[str, Any]) -> list[bytes | float]:
    return _hello(model, body)[:3]


def _bad_json(model: str, body: dict[str, Any]) -> list[bytes | float]:
    return [*_hello(model, body)[:2], 0.05, b"data: {not json\n\n"]


def _bad_utf8(model: str, body: dict[str, Any]) -> list[bytes | float]:
    # In one write, content chunks in the envelope already seen, one of them not UTF-8.
    run = [sse_chunk(model, {"content": text}) for text in (" a", " b\u00e9", " c")]
    return [*_hello(model, body)[:2], 0.05, b"".join(run).replace("é".encode(), b"\xe9")]


def _crlf(model: str, body: dict[str, Any]) -> list[bytes | float]:
    # CRLF line ends and events split at awkward byte boundaries.
    raw = b"".join(f for f in _hello(model, body) if isinstance(f, bytes)).replace(b"\n", b"\r\n")
    return [raw[i : i + 7] for i in range(0, len(raw), 7)]


def _slow(model: str, body: dict[str, Any]) -> list[bytes | float]:
    frames = _hello(model, body)
    return [frames[0], 0.3, *frames[1:]]


def _endless(model: str, body: dict[str, Any]) -> list[bytes | float]:
    frames: list[bytes | float] = [sse_chunk(model, {"role": "assistant", "content": ""})]
    for _ in range(600):
        frames += [0.05, sse_chunk(model, {"content": "."})]
    return frames


def _flood(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """~60 MB of answer as fast as the reader takes it (one chunk object, repeated)."""
    chunk = sse_chunk(model, {"content": "flood " * 20})
    return [sse_chunk(model, {"role": "assistant", "content": ""}), *[chunk] * 200_000]


def _weather(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """A tool round trip: text and a tool call; once a tool result is in, an answer using it."""
    answer = _weather_answer(body)
    if answer is not None:
        frames: list[bytes | float] = [
            sse_chunk(model, {"role": "assistant", "content": ""}),
            sse_chunk(model, {"content": answer}),
            sse_chunk(model, {}, "stop"),
        ]
    else:
        call = {
            "index": 0,
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather"},
        }
        frames = [
            sse_chunk(model, {"role": "assistant", "content": "Let me check."}),
            sse_chunk(model, {"tool_calls": [call]}),
            sse_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            sse_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            sse_chunk(model, {}, "tool_calls"),
        ]
    return [*frames, _usage_chunk(model), b"data: [DONE]\n\n"]


def _weather_answer(body: dict[str, Any]) -> str | None:
    last = body["messages"][-1]
    return f"It is {last['content']} in Paris." if last.get("role") == "tool" else None


def _stop_sequence(model: str, body: dict[str, Any]) -> list[bytes | float]:
    """vLLM style: the stop string that ended generation is named in the choice's stop_reason."""
    choice = {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": body["stop"][0]}
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [choice],
    }
    finish = b"data: " + orjson.dumps(payload) + b"\n\n"
    return [*_hello(model, body)[:2], finish, _usage_chunk(model), b"data: [DONE]\n\n"]


# What the "structured" model answers: JSON of the shape tests ask for with a response format.
STRUCTURED = '{"city":"Paris","temperature_c":21}'


def _structured(model: str, body: dict[str, Any]) -> list[bytes | float]:
    frames: list[bytes | float] = [
        sse_chunk(model, {"role": "assistant", "content": ""}),
        sse_chunk(model, {"content": STRUCTURED[:12]}),
        sse_chunk(model, {"content": STRUCTURED[12:]}),
        sse_chunk(model, {}, "stop"),
    ]
    return [*frames, _usage_chunk(model), b"data: [DONE]\n\n"]


BEHAVIOURS: dict[str, Script] = {
    "structured": _structured,
    "tools": _tools,
    "reasoning": _reasoning,
    "processing": _processing,
    "cached": _cached,
    "drop-after-2": _drop_after_2,
    "gated": _gated,
    "midstream-error": _midstream_error,
    "content-then-error": _error_with_content,
    "first-chunk-error": _first_chunk_error,
    "no-finish": _no_finish,
    "bad-json": _bad_json,
    "bad-utf8": _bad_utf8,
    "crlf": _crlf,
    "slow": _slow,
    "endless": _endless,
    "flood": _flood,
    "weather": _weather,
    "stop-sequence": _stop_sequence,
}

# "error-<status>[-<code>]" models answer with that status (and Workers AI internal code)
# in the dialect's error shape.
ERROR_PREFIX = "error-"


async def _chat(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE]
    dialect = _dialect(request.path)
    body = await request.json()
    fake.requests.append(Received(dialect, request.path, dict(request.headers), body))
    model = str(body.get("model", ""))
    name = model.rsplit("/", 1)[-1].removeprefix("@cf/")
    if name.startswith(ERROR_PREFIX):
        status_text, _, code_text = name.removeprefix(ERROR_PREFIX).partition("-")
        status, code = int(status_text), int(code_text or 0)
        return _error_response(dialect, status, f"fake failure {status}", code)
    side = fake.openrouter
    if dialect == "openrouter" and model.startswith("metered/"):
        return await metered(request, side, body)
    listed = dialect == "openrouter" and model in side.models
    if not body.get("stream"):
        completion = _non_stream(model, name, body)
        if listed and "usage" in completion:
            bill_completion(side, body, completion)
        return web.json_response(completion)
    frames = BEHAVIOURS.get(name, _hello)(model, body)
    if listed:
        bill_listed(side, body, frames)
    return await _stream(request, fake, frames)


async def _models(request: web.Request) -> web.Response:
    side = request.app[FAKE].openrouter
    side.list_requests += 1
    body = side.list_body if side.list_body is not None else side.listing()
    return web.Response(status=side.list_status, body=body, content_type="application/json")


def _non_stream(model: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    if name == "tools":
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        }
        return _completion(
            model, {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
        )
    if name == "reasoning":
        return _completion(
            model,
            {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
        )
    if name == "weather":
        answer = _weather_answer(body)
        if answer is not None:
            return _completion(model, {"role": "assistant", "content": answer})
        call = {
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
        message = {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}
        return _completion(model, message, "tool_calls")
    if name == "structured":
        return _completion(model, {"role": "assistant", "content": STRUCTURED})
    if name == "stop-sequence":
        completion = _completion(model, {"role": "assistant", "content": "Hello"})
        completion["choices"][0]["stop_reason"] = body["stop"][0]
        return completion
    if name == "cached":
        completion = _completion(model, {"role": "assistant", "content": "Hello world"})
        completion["usage"] = CACHED_USAGE
        return completion
    if name == "midstream-error":
        completion = _completion(model, {"role": "assistant", "content": ""}, "error")
        completion["choices"][0]["error"] = {"code": 502, "message": "Provider returned error"}
        return completion
    return _completion(model, {"role": "assistant", "content": "Hello world"})


async def _stream(
    request: web.Request, fake: FakeUpstream, frames: list[bytes | float]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    try:
        for frame in frames:
            if isinstance(frame, float):
                await asyncio.sleep(frame)
            elif frame == b"GATE":
                await asyncio.to_thread(fake.gate.wait, 10)
            elif frame == b"DROP":
                assert request.transport is not None
                request.transport.abort()
                return response
            else:
                await response.write(frame)
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        fake.disconnects.append(time.monotonic())
        raise
    return response


def start_fake_upstream() -> tuple[FakeUpstream, Callable[[], None]]:
    """Run the fake in a background thread; return it and a function that stops it."""
    from tests.fakes.responses_upstream import add_responses_routes  # it imports this module

    fake = FakeUpstream()
    app = web.Application()
    app[FAKE] = fake
    app.router.add_post("/client/v4/accounts/{account}/ai/v1/chat/completions", _chat)
    app.router.add_post("/{dialect}/api/v1/chat/completions", _chat)
    app.router.add_get("/openrouter/api/v1/models", _models)
    app.router.add_post("/{dialect}/v1/chat/completions", _chat)
    add_responses_routes(app)
    from tests.fakes.anthropic_upstream import add_anthropic_routes  # it imports this module

    add_anthropic_routes(app)
    from tests.fakes.embeddings import add_embedding_routes  # late: it builds on this module

    add_embedding_routes(app)
    fake.url, stop = serve_in_thread(app)
    return fake, stop
