"""`callmissed bench`: the page's tables through a real gateway and fake upstreams, a few
requests per row (bounded in count and time), with its JSON, chart and progress."""

from __future__ import annotations

import re

import orjson

from tests.conftest import Gateway

WAYS = [
    "stream · reused · HTTP/2",
    "non-stream · reused · HTTP/2",
    "stream · fresh · HTTP/2",
    "stream · reused · HTTP/1.1",
]


def _bench(gateway: Gateway, *args: str):
    return gateway.cli("bench", "--url", gateway.url, "--key", gateway.key, "-n", "3", *args)


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "route", "way"]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]


def test_each_model_in_each_way_with_its_route_and_percentiles(gateway, tmp_path):
    report, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = _bench(
        gateway,
        "--model",
        "local-model",
        "--model",
        "local-thinker",
        "--json",
        str(report),
        "--chart",
        str(chart),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_table(result.stdout)) == 8
    assert "local-model    local  stream · reused · HTTP/2" in result.stdout
    assert "local-thinker  local  stream · reused · HTTP/1.1" in result.stdout
    saved = orjson.loads(report.read_bytes())["rows"]
    assert [(row["model"], row["route"], row["ok"]) for row in saved] == [
        ("local-model", "local", 3)
    ] * 4 + [("local-thinker", "local", 3)] * 4
    ways = [(row["stream"], row["connection"], row["http"]) for row in saved[:4]]
    assert ways == [(True, "reused", "2"), (False, "reused", "2"), (True, "fresh", "2"),
                    (True, "reused", "1.1")]  # fmt: skip
    for row in saved:
        assert len(row["ttfb_ms"]["samples"]) == 3
        assert 0 < row["ttfb_ms"]["p50"] <= row["total_ms"]["p50"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for way in WAYS:  # progress, one line per model and way, on stderr
        assert f"bench: callmissed: local-model · {way}" in result.stderr


def test_streaming_shows_the_first_token_long_before_a_whole_answer(gateway):
    # The simulator's gpt-oss-120b has the page's profile: first token ~50 ms, ~1.5 s in all.
    result = _bench(gateway, "--model", "sim/gpt-oss-120b", "--vary", "stream", "-n", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    streamed, whole = _table(result.stdout)
    assert streamed[2].strip() == "stream · reused · HTTP/2"
    ttfb, total = (_seconds(cell) for cell in (streamed[3], streamed[5]))
    # ~1.5 s: the simulator's timers fire on libuv's whole milliseconds, a run came to 1.49 s
    assert 0.05 <= ttfb < 1.0 and total >= 1.4
    assert _seconds(whole[3]) >= 1.4  # a non-streamed answer's first byte is its end


def _seconds(cell: str) -> float:
    value, unit = cell.split()
    return float(value) / (1000 if unit == "ms" else 1)


def test_direct_rows_sit_beside_the_gateway_s(gateway):
    result = _bench(
        gateway,
        "--model",
        "local-model",
        "--vary",
        "none",
        "--direct-url",
        f"{gateway.upstream.url}/local/v1",
        "--direct-model",
        "hello",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _table(result.stdout)
    assert [row[:2] for row in rows] == [["local-model", "local"], ["hello", "direct"]]


def test_failures_are_counted_and_fail_the_run(gateway):
    result = _bench(gateway, "--model", "no-such-model", "--vary", "stream")
    assert result.returncode == 1
    assert "{'HTTP 404': 3}" in result.stdout


def test_a_chart_without_matplotlib_says_what_to_install_before_it_runs(gateway, tmp_path):
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**gateway.env, "PYTHONPATH": f"{stub.parent}:{gateway.env['PYTHONPATH']}"}
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "callmissed", "bench", "--url", gateway.url, "--key", gateway.key,
         "--chart", str(tmp_path / "x.png")],
        env=env, cwd=gateway.workdir, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'callmissed[bench]'" in result.stderr
    assert "bench: callmissed:" not in result.stderr  # it did not start
