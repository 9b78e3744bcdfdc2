"""The fake upstream over HTTPS, as every built-in vendor is reached: HTTP/2 or HTTP/1.1 by ALPN.

The same answers and model-name behaviours as benchmarks/upstream.py (fast, paced, late,
flaky), served by granian (hyper underneath, TLS by rustls) from one worker, so one port
negotiates `h2` for clients that offer it and `http/1.1` for the rest.

Run: `python -m benchmarks.upstream_tls --port P --cert C --key K [--pace-ms …]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from benchmarks.upstream import (
    CHUNKS,
    COMPLETION,
    MODELS,
    UNAVAILABLE,
    Behaviour,
    is_streamed,
    stream_events,
)

__all__ = ["main", "rsgi_app"]

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class _Upstream:
    def __init__(self) -> None:
        knobs = [float(os.environ[f"BENCH_UPSTREAM_{name}"]) for name in _KNOBS]
        pace_ms, late_pct, late_ms, fail_pct = knobs
        self._behaviour = Behaviour(pace_ms, late_pct, late_ms, seed=1, fail_pct=fail_pct)

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        pass

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.method == "GET":
            protocol.response_bytes(200, _JSON, MODELS)
            return
        body = await protocol()
        if not scope.path.endswith("/chat/completions"):
            protocol.response_bytes(404, _JSON, b'{"error":{"message":"not found"}}')
        elif self._behaviour.fails(body):
            protocol.response_bytes(503, _JSON, UNAVAILABLE)
        elif not is_streamed(body):
            protocol.response_bytes(200, _JSON, COMPLETION)
        else:
            await self._stream(body, protocol.response_stream(200, _SSE))

    async def _stream(self, body: bytes, transport: Any) -> None:
        model, events = stream_events(body)
        behaviour = self._behaviour
        if model.startswith(b"paced") and behaviour.pace > 0:
            # As the plain upstream: role and first token at once, then one token a pace, the
            # finish, usage and [DONE] riding with the last one.
            await transport.send_bytes(events[0] + events[1])
            last = CHUNKS  # events[CHUNKS] is the last content event
            for index in range(2, last):
                await asyncio.sleep(behaviour.pace)
                await transport.send_bytes(events[index])
            await asyncio.sleep(behaviour.pace)
            await transport.send_bytes(b"".join(events[last:]))
            return
        if model.startswith(b"late") and behaviour.random.random() < behaviour.late_fraction:
            await asyncio.sleep(behaviour.late)
        await transport.send_bytes(b"".join(events))


_KNOBS = ("PACE_MS", "LATE_PCT", "LATE_MS", "FAIL_PCT")


def rsgi_app() -> _Upstream:
    return _Upstream()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    parser.add_argument("--late-pct", type=float, default=5.0)
    parser.add_argument("--late-ms", type=float, default=500.0)
    parser.add_argument("--fail-pct", type=float, default=30.0)
    args = parser.parse_args()
    knobs = (args.pace_ms, args.late_pct, args.late_ms, args.fail_pct)
    for name, value in zip(_KNOBS, knobs, strict=True):
        os.environ[f"BENCH_UPSTREAM_{name}"] = str(value)

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    Granian(
        "benchmarks.upstream_tls:rsgi_app",
        factory=True,
        address="127.0.0.1",
        port=args.port,
        interface=Interfaces.RSGI,
        workers=1,
        http=HTTPModes.auto,
        loop=Loops.uvloop,
        backlog=4096,
        log_access=False,
        ssl_cert=Path(args.cert),
        ssl_key=Path(args.key),
    ).serve()


if __name__ == "__main__":
    main()
