"""A bare pass-through proxy on CallMissed's stack: the stack's own floor, for reference.

granian (its native RSGI interface on uvloop, as `callmissed serve` runs; `--interface asgi` for
granian's ASGI, `--server uvicorn` for uvicorn) + one aiohttp session: forward the body
to the upstream and stream its bytes back unchanged. No auth, no parsing, no accounting.
What CallMissed costs beyond this row is the cost of its features; what this row costs over
`direct` is the cost of the server and the client library.

Run: `python -m benchmarks.passthrough --port P --upstream http://127.0.0.1:U/v1`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp

__all__ = ["app", "main", "rsgi_app"]

_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session  # a benchmark fixture; the real gateway builds resources in its lifespan
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _session is not None:
            await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    url = os.environ["PASSTHROUGH_UPSTREAM"] + scope["path"].removeprefix("/v1")
    headers = {"content-type": "application/json"}
    async with _session.post(url, data=body, headers=headers) as upstream:
        start = {"type": "http.response.start", "status": upstream.status}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        async for data in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class _RSGIPassthrough:
    """The same proxy as a native RSGI app, as `callmissed serve` runs its own (rsgi.py)."""

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        if _session is not None:
            loop.run_until_complete(_session.close())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        global _session
        if scope.path == "/healthz":
            protocol.response_bytes(200, [], b"ok")
            return
        if _session is None:
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = await protocol()
        url = os.environ["PASSTHROUGH_UPSTREAM"] + scope.path.removeprefix("/v1")
        headers = {"content-type": "application/json"}
        async with _session.post(url, data=body, headers=headers) as upstream:
            out = [("content-type", "text/event-stream")]
            transport = protocol.response_stream(upstream.status, out)
            async for data in upstream.content.iter_any():
                await transport.send_bytes(data)


def rsgi_app() -> _RSGIPassthrough:
    return _RSGIPassthrough()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    parser.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi")
    parser.add_argument("--runtime-mode", choices=("auto", "st", "mt"), default="auto")
    parser.add_argument("--task-impl", choices=("asyncio", "rust"), default="asyncio")
    args = parser.parse_args()
    os.environ["PASSTHROUGH_UPSTREAM"] = args.upstream
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
