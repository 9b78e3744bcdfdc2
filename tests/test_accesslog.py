"""The access log: one JSON line per chat request, with the key's name and never the key; on by
default to stderr, or appended to a file, or off (CALLMISSED_ACCESS_LOG)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from callmissed.accesslog import _iso_time, _pieces
from tests.accounting import start_billing_gateway
from tests.conftest import Gateway, start_gateway, stop_gateway


def _ask(gateway: Gateway, model: str, key: str | None = None, **body: Any) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **body}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key or gateway.key}"},
        timeout=10,
    )


def _lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The log's JSON lines, once there are `count` of them (they are written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_each_request_is_one_line_with_where_it_went_and_what_it_cost(upstream, tmp_path):
    log = tmp_path / "access.jsonl"
    running = start_billing_gateway(upstream, tmp_path, CALLMISSED_ACCESS_LOG=str(log))
    try:
        ok = _ask(running, "priced", max_tokens=50)
        streamed = _ask(running, "priced", stream=True)
        failed = _ask(running, "priced-fails")
        refused = _ask(running, "no-such-model")
        assert [r.status_code for r in (ok, streamed, failed, refused)] == [200, 200, 502, 404]
        lines = {line["request_id"]: line for line in _lines(log, 4)}
    finally:
        stop_gateway(running)
    assert len(lines) == 4
    first = lines[ok.headers["x-request-id"]]
    assert first["key"] == "first key"  # the key's name
    assert first["endpoint"] == "/v1/chat/completions"
    assert first["model"] == "priced" and first["stream"] is False
    assert (first["route"], first["upstream_model"]) == ("local", "hello")
    assert (first["status"], first["error"]) == (200, None)
    assert (first["prompt_tokens"], first["completion_tokens"]) == (5, 6)
    assert first["cost"] == ok.json()["usage"]["cost"] == 17 / 1_000_000
    assert first["attempts"] == 1
    assert 0 <= first["gw_ms"] <= first["first_token_ms"] <= first["total_ms"]
    assert first["time"].endswith("Z") or first["time"].endswith("+00:00")
    stream_line = lines[streamed.headers["x-request-id"]]
    assert stream_line["stream"] is True and stream_line["status"] == 200
    assert stream_line["completion_tokens"] == 6
    failure = lines[failed.headers["x-request-id"]]
    assert (failure["status"], failure["error"], failure["cost"]) == (502, "upstream_error", 0)
    assert failure["attempts"] == 3  # a 500 is retried: the default 3 attempts
    assert failure["failed"] == ["local:error-500 500"] * 3
    refusal = lines[refused.headers["x-request-id"]]
    assert (refusal["status"], refusal["error"]) == (404, "model_not_found")
    assert (refusal["key"], refusal["model"], refusal["route"]) == ("first key", None, None)
    assert running.key not in log.read_text()  # never the key itself


def test_by_default_the_lines_go_to_stderr_and_off_means_none(upstream, tmp_path):
    default = start_gateway(upstream, tmp_path / "default")
    try:
        response = _ask(default, "local-model")
        lines = _lines(default.log, 1)
    finally:
        stop_gateway(default)
    assert [line["request_id"] for line in lines] == [response.headers["x-request-id"]]
    off = start_gateway(upstream, tmp_path / "off", CALLMISSED_ACCESS_LOG="off")
    try:
        assert _ask(off, "local-model").status_code == 200
        time.sleep(0.3)  # several batches' time
    finally:
        stop_gateway(off)
    assert _lines(off.log, 0) == []


def test_a_batch_is_written_in_whole_lines_no_write_longer_than_a_pipe_keeps_whole():
    lines = [b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * (n * 37 % 300)) for n in range(200)]
    pieces = list(_pieces(b"".join(lines)))
    assert b"".join(pieces) == b"".join(lines)
    assert all(len(piece) <= 4096 and piece.endswith(b"\n") for piece in pieces)
    long_line = b"{" + b"y" * 5000 + b"}\n"
    assert list(_pieces(lines[0] + long_line + lines[1])) == [lines[0], long_line, lines[1]]


def test_the_time_reads_as_datetime_writes_it_to_the_millisecond():
    now = 1_765_000_000.0
    # Rounded to the microsecond half to even, then cut to the millisecond, as datetime does:
    # just under a second's end rounds up into the next second.
    for fraction in (0.0, 0.0004999, 0.0005, 0.25, 0.9994999, 0.9999994, 0.9999996):
        for epoch in (now + fraction, now + 3601 + fraction):
            expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
            assert _iso_time(epoch) == expected
