"""A bare granian RSGI app that reads a request body the plain way, chunk by chunk, and writes
what it saw to $BODY_REPORT: tests/edge/test_granian_h2_body.py runs it to show granian's h2 body
iterator yielding empty chunks without end once the client has reset its stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["app"]

_LOOKS = 10_000  # empty chunks in a row after which the iterator is taken to spin


async def app(scope: Any, protocol: Any) -> None:
    if scope.proto != "http":
        return
    if scope.method != "POST":  # the test's probe that the server is up
        protocol.response_bytes(200, [], b"up")
        return
    chunks = protocol.__aiter__()
    data = empty_in_a_row = 0
    ended = "StopAsyncIteration"
    while empty_in_a_row < _LOOKS:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except Exception as exc:
            ended = type(exc).__name__
            break
        data += len(chunk)
        empty_in_a_row = 0 if chunk else empty_in_a_row + 1
    else:
        ended = "spinning"
    _report(f"{ended} {data} {empty_in_a_row}")
    protocol.response_bytes(200, [], b"read")


def _report(text: str) -> None:
    Path(os.environ["BODY_REPORT"]).write_text(text)
