"""The Getting Started page's checklist, run against a live gateway with measured numbers.

`callmissed doctor --url … --key …` runs it (doctor.py). Each item is ok, warn or fail:
streaming (first token streamed vs. the whole non-streamed answer), the model (its route and
recent first-token times), Kimi's `reasoning_effort: "none"` (completion tokens with and without),
connection reuse (three calls on one connection vs. a new one each), and HTTP/2 (h2c prior
knowledge for http://, ALPN for https://). Only the gateway is contacted.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from callmissed.sse import SSEDecoder

__all__ = ["FAIL", "OK", "WARN", "Check", "Gateway", "run_checklist"]

OK, WARN, FAIL = "ok", "warn", "FAIL"
_SLOW_MODELS = ("sonnet", "opus")  # the page: avoid them on latency-bound paths
_QUESTION = [{"role": "user", "content": "Explain quicksort in one paragraph."}]
_ARITHMETIC = [{"role": "user", "content": "What is 2+2?"}]
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
_SETTINGS = 0x4


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != FAIL


@dataclass(frozen=True, slots=True)
class Gateway:
    url: str  # without /v1
    key: str
    ssl: ssl.SSLContext | None = None  # for https with a private CA (--ca-file)


class _Failed(Exception):
    """A request the checklist needed did not succeed: the item fails with this text."""


async def run_checklist(gateway: Gateway, model: str, kimi_model: str) -> list[Check]:
    """Every item, in the page's order."""
    connector = aiohttp.TCPConnector(limit=1, ssl=gateway.ssl or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        items = [
            ("streaming", _check_streaming(session, gateway, model)),
            ("model", _check_model(session, gateway, model)),
            ("kimi reasoning", _check_kimi(session, gateway, kimi_model)),
            ("connection reuse", _check_reuse(gateway, model)),
            ("HTTP/2", _check_http2(gateway)),
        ]
        return [await _guarded(name, item) for name, item in items]


async def _guarded(name: str, item: Awaitable[Check]) -> Check:
    try:
        return await item
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Check(name, FAIL, f"the gateway did not answer: {type(exc).__name__} {exc}")


async def _check_streaming(session: aiohttp.ClientSession, gateway: Gateway, model: str) -> Check:
    name = "streaming"
    try:
        first_token, _ = await _stream(session, gateway, model, _QUESTION)
        whole, _ = await _complete(session, gateway, {"model": model, "messages": _QUESTION})
    except _Failed as exc:
        return Check(name, FAIL, str(exc))
    detail = (
        f"{model}: first token after {first_token:.0f} ms streamed; "
        f"the whole answer after {whole:.0f} ms non-streamed"
    )
    if first_token < whole:
        return Check(name, OK, f"{detail} ({whole / max(first_token, 0.01):.0f}x sooner)")
    return Check(name, WARN, f"{detail}: streaming did not show text sooner")


async def _check_model(session: aiohttp.ClientSession, gateway: Gateway, model: str) -> Check:
    name = "model"
    url = f"{gateway.url}/v1/models/{quote(model, safe='/')}"
    async with session.get(url, headers=_auth(gateway)) as response:
        if response.status != 200:
            return Check(name, FAIL, f"{model}: HTTP {response.status} {await _message(response)}")
        entry = await response.json(loads=orjson.loads)
    routes = [_describe_route(health) for health in entry.get("health", [])]
    detail = f"{model} -> {', then '.join(routes)}"
    if not entry.get("available", True):
        return Check(name, FAIL, f"{detail}: {entry.get('unavailable_reason')}")
    states = [health.get("state") for health in entry.get("health", [])]
    if states and all(state == "open" for state in states):
        return Check(name, FAIL, f"{detail}: every route is resting after failures")
    if any(word in model for word in _SLOW_MODELS):
        return Check(name, WARN, f"{detail}: a big model; prefer gpt-oss-120b, kimi-k2.6 or auto")
    if "open" in states or any((h.get("error_rate") or 0) > 0.2 for h in entry["health"]):
        return Check(name, WARN, f"{detail}: a route is failing")
    return Check(name, OK, detail)


def _describe_route(health: dict[str, Any]) -> str:
    ttfb = health.get("ttfb_ms")
    recent = f"recent first token {ttfb:.0f} ms" if ttfb is not None else "no first token yet"
    errors = f"{(health.get('error_rate') or 0) * 100:.0f} % errors"
    return f"{health.get('route')} ({health.get('state')}, {recent}, {errors})"


async def _check_kimi(session: aiohttp.ClientSession, gateway: Gateway, model: str) -> Check:
    name = "kimi reasoning"
    body: dict[str, Any] = {"model": model, "messages": _ARITHMETIC}
    try:
        _, thinking = await _complete(session, gateway, body)
        _, instant = await _complete(session, gateway, {**body, "reasoning_effort": "none"})
    except _Failed as exc:
        status = WARN if "503" in str(exc) or "404" in str(exc) else FAIL
        return Check(name, status, f"{model}: not checked: {exc}")
    with_, without = _completion_tokens(thinking), _completion_tokens(instant)
    detail = f"{model}: {with_} completion tokens by default, {without} with reasoning_effort none"
    if without < with_:
        return Check(name, OK, f"{detail} ({with_ / max(without, 1):.0f}x fewer)")
    return Check(name, WARN, f"{detail}: no saving")


async def _check_reuse(gateway: Gateway, model: str) -> Check:
    name = "connection reuse"
    url = f"{gateway.url}/v1/models/{quote(model, safe='/')}"
    try:
        reused, connections = await _timed_calls(gateway, url, fresh=False)
        fresh, _ = await _timed_calls(gateway, url, fresh=True)
    except (aiohttp.ClientError, OSError, _Failed) as exc:
        return Check(name, FAIL, f"{url}: {exc}")
    # The first call on the reused connection opened it: the next two show what reuse saves.
    saved = sum(fresh) / len(fresh) - sum(reused[1:]) / len(reused[1:])
    detail = (
        f"3 calls on one connection: {_list(reused)} ms; a new connection each: {_list(fresh)} ms"
        f" ({saved:+.1f} ms a call for the handshake)"
    )
    if connections > 1:
        return Check(name, FAIL, f"{detail}; the gateway closed the connection between calls")
    return Check(name, OK, detail)


async def _timed_calls(gateway: Gateway, url: str, fresh: bool) -> tuple[list[float], int]:
    """Three GETs, on one connection or a new one each; their times and connections opened."""
    opened = 0

    async def count(*_: Any) -> None:
        nonlocal opened
        opened += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(count)
    times: list[float] = []
    session: aiohttp.ClientSession | None = None
    try:
        for _ in range(3):
            if session is None or fresh:
                if session is not None:
                    await session.close()
                connector = aiohttp.TCPConnector(limit=1, ssl=gateway.ssl or True)
                session = aiohttp.ClientSession(connector=connector, trace_configs=[tracing])
            started = time.perf_counter()
            async with session.get(url, headers=_auth(gateway)) as response:
                await response.read()
                if response.status != 200:
                    raise _Failed(f"HTTP {response.status}")
            times.append((time.perf_counter() - started) * 1000)
    finally:
        if session is not None:
            await session.close()
    return times, opened


async def _check_http2(gateway: Gateway) -> Check:
    name = "HTTP/2"
    parts = urlsplit(gateway.url)
    secure = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    started = time.perf_counter()
    try:
        if secure:
            protocol = await _alpn(host, port, gateway.ssl or ssl.create_default_context())
        else:
            protocol = await _h2c_prior_knowledge(host, port)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return Check(name, FAIL, f"{gateway.url}: {type(exc).__name__} {exc}")
    took = (time.perf_counter() - started) * 1000
    how = "ALPN" if secure else "h2c prior knowledge"
    if protocol == "h2":
        return Check(name, OK, f"{how}: the gateway speaks HTTP/2 ({took:.1f} ms to its SETTINGS)")
    return Check(
        name, WARN, f"{how}: {protocol or 'no HTTP/2'}; clients need a connection per request"
    )


async def _alpn(host: str, port: int, context: ssl.SSLContext) -> str | None:
    context.set_alpn_protocols(["h2", "http/1.1"])
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.selected_alpn_protocol() if ssl_object else None
    finally:
        writer.close()


async def _h2c_prior_knowledge(host: str, port: int) -> str | None:
    """Send the HTTP/2 preface in clear text; "h2" if the server answers with its SETTINGS."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_H2_PREFACE + _SETTINGS_FRAME)
            await writer.drain()
            header = await reader.readexactly(9)  # the first frame's header
        finally:
            writer.close()
    return "h2" if header[3] == _SETTINGS else None


# -- requests ---------------------------------------------------------------------------------


async def _stream(
    session: aiohttp.ClientSession, gateway: Gateway, model: str, messages: list[dict[str, str]]
) -> tuple[float, float]:
    """A streamed request: ms to its first token (content or reasoning), ms to its end."""
    body = {"model": model, "messages": messages, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    decoder = SSEDecoder()
    async with session.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=_auth(gateway)
    ) as response:
        if response.status != 200:
            raise _Failed(f"HTTP {response.status} {await _message(response)}")
        async for raw in response.content.iter_any():
            for event in decoder.feed(raw):
                if first is None and event.data != b"[DONE]" and _has_token(event.data):
                    first = time.perf_counter()
    done = time.perf_counter()
    if first is None:
        raise _Failed("the stream ended without a token")
    return (first - started) * 1000, (done - started) * 1000


async def _complete(
    session: aiohttp.ClientSession, gateway: Gateway, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """A non-streamed request: ms to the whole answer, and the answer."""
    started = time.perf_counter()
    async with session.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=_auth(gateway)
    ) as response:
        if response.status != 200:
            raise _Failed(f"HTTP {response.status} {await _message(response)}")
        answer: dict[str, Any] = await response.json(loads=orjson.loads)
    return (time.perf_counter() - started) * 1000, answer


def _has_token(data: bytes) -> bool:
    chunk = orjson.loads(data)
    if chunk.get("error"):
        raise _Failed(f"the stream failed: {chunk['error'].get('message')}")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in ("content", "reasoning", "reasoning_content", "tool_calls")):
            return True
    return False


def _completion_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage") or {}
    return int(usage.get("completion_tokens") or 0)


async def _message(response: aiohttp.ClientResponse) -> str:
    try:
        payload = orjson.loads(await response.read())
        return str(payload["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""


def _auth(gateway: Gateway) -> dict[str, str]:
    return {"authorization": f"Bearer {gateway.key}"}


def _list(times: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in times)
