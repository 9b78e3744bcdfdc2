"""A bare pass-through proxy on CallMissed's stack: the stack's own floor, for reference.

granian (its native RSGI interface on uvloop, as `callmissed serve` runs; `--interface asgi` for
granian's ASGI, `--server uvicorn` for uvicorn) + one pooled client as the gateway uses for the
upstream's protocol (`callmissed/upstream/http1.py` for HTTP/1.1, plain or over TLS;
`callmissed/upstream/http2.py`'s transport for HTTP/2, `--upstream-http2`): forward the body
to the upstream and stream its bytes back unchanged. No auth, no parsing, no accounting.
What CallMissed costs beyond this row is the cost of its features; what this row costs over
`direct` is the cost of the server and the client library.

Run: `python -m benchmarks.passthrough --port P --upstream http://127.0.0.1:U/v1`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit

from callmissed.upstream.http1 import Client

__all__ = ["app", "main", "rsgi_app"]

_client: Client | None = None
_h2: Any = None  # the gateway's HTTP/2 transport, for --upstream-http2


def _upstream() -> tuple[Client, str]:
    """The one pooled client (made in the serving loop on first use) and the upstream's path."""
    global _client  # a benchmark fixture; the real gateway builds resources at start-up
    base = os.environ["PASSTHROUGH_UPSTREAM"]
    if _client is None:
        _client = Client(
            base,
            connect_timeout=10.0,
            read_timeout=300.0,
            ca_file=os.environ.get("PASSTHROUGH_CA_FILE") or None,
        )
    return _client, urlsplit(base).path


def _h2_transport() -> Any:
    """The gateway's own HTTP/2 transport (its connections, as it opens them), for an https
    upstream."""
    global _h2
    if _h2 is None:
        from callmissed.settings import ProviderSettings, Settings, Timeouts
        from callmissed.upstream.contract import Peer
        from callmissed.upstream.http2 import Http2Transport

        ca_file = os.environ.get("PASSTHROUGH_CA_FILE") or None
        base = os.environ["PASSTHROUGH_UPSTREAM"]
        provider = ProviderSettings("upstream", "openai", base, ca_file=ca_file)
        settings = Settings(
            providers={}, models={}, reasoning_policies={}, timeouts=Timeouts(connect=10.0)
        )
        _h2 = Http2Transport(provider, settings, Peer("the upstream", "upstream"))
    return _h2


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _client is not None:
            await _client.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    client, path = _upstream()
    target = path + scope["path"].removeprefix("/v1")
    upstream = await client.send("POST", target, _HEADERS, body)
    start = {"type": "http.response.start", "status": upstream.status}
    await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
    async for data in upstream.aiter_bytes():
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class _RSGIPassthrough:
    """The same proxy as a native RSGI app, as `callmissed serve` runs its own (rsgi.py)."""

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        if _client is not None:
            loop.run_until_complete(_client.close())
        if _h2 is not None:
            loop.run_until_complete(_h2.close())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.path == "/healthz":
            protocol.response_bytes(200, [], b"ok")
            return
        body = await protocol()
        if os.environ.get("PASSTHROUGH_HTTP2"):
            await _forward_h2(scope, protocol, body)
            return
        client, path = _upstream()
        target = path + scope.path.removeprefix("/v1")
        upstream = await client.send("POST", target, _HEADERS, body)
        transport = protocol.response_stream(
            upstream.status, [("content-type", "text/event-stream")]
        )
        async for data in upstream.aiter_bytes():
            await transport.send_bytes(data)


async def _forward_h2(scope: Any, protocol: Any, body: bytes) -> None:
    from callmissed.providers import UpstreamRequest

    url = os.environ["PASSTHROUGH_UPSTREAM"] + scope.path.removeprefix("/v1")
    upstream = await _h2_transport().send(UpstreamRequest(url, _HEADERS, body, "passthrough"))
    try:
        transport = protocol.response_stream(
            upstream.status, [("content-type", "text/event-stream")]
        )
        while chunk := await upstream.receive():
            await transport.send_bytes(chunk)
    finally:
        upstream.release()


_HEADERS = {"content-type": "application/json"}


def rsgi_app() -> _RSGIPassthrough:
    return _RSGIPassthrough()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-http2", action="store_true", help="reach it over h2 (ALPN)")
    parser.add_argument("--ca-file", help="CA certificate to trust for an https upstream")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    parser.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi")
    parser.add_argument("--runtime-mode", choices=("auto", "st", "mt"), default="auto")
    parser.add_argument("--task-impl", choices=("asyncio", "rust"), default="asyncio")
    args = parser.parse_args()
    os.environ["PASSTHROUGH_UPSTREAM"] = args.upstream
    os.environ["PASSTHROUGH_CA_FILE"] = args.ca_file or ""
    os.environ["PASSTHROUGH_HTTP2"] = "1" if args.upstream_http2 else ""
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "benchmarks.passthrough:app",
            host="127.0.0.1",
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )
        return
    _granian(args)


def _granian(args: argparse.Namespace) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes, TaskImpl

    rsgi = args.interface == "rsgi"  # as `callmissed serve` runs
    Granian(
        "benchmarks.passthrough:rsgi_app" if rsgi else "benchmarks.passthrough:app",
        factory=rsgi,
        address="127.0.0.1",
        port=args.port,
        interface=Interfaces.RSGI if rsgi else Interfaces.ASGI,
        workers=args.workers,
        http=HTTPModes.auto,
        loop=Loops.uvloop,
        backlog=2048,
        log_access=False,
        runtime_mode=RuntimeModes(args.runtime_mode),
        task_impl=TaskImpl(args.task_impl),
    ).serve()


if __name__ == "__main__":
    main()
