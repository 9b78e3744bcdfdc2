"""`python -m benchmarks abuse [--scale S] [--hold SECONDS]`: issue 12's attacks, measured.

Starts `callmissed serve` (2 workers, SQLite, default limits) and a hostile upstream
(benchmarks/hostile.py) on 127.0.0.1. For each attack a well-behaved client streams a short
answer over and over on its own connections; the table gives its p99 and failures, the peak
RSS of a worker, and the workers' CPU in the second that starts one second after the attacker
left. `--scale 1` is the issue's size (2,050 idle connections, 32 MiB bodies, 100 MB error
bodies...); smaller scales shrink every count and size. docs/security.md says what to expect.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import hpack
import httpx
import orjson

from benchmarks.machine import ProcessTree
from benchmarks.systems import HOST, ROOT, clean_env, free_port, wait_healthy

__all__ = ["main"]

_CONFIG = """
[providers.hostile]
type = "openai"
base_url = "http://127.0.0.1:{port}/v1"
""" + "".join(
    f'\n[models."{name}"]\nroutes = ["hostile:{name}"]\n'
    for name in ("good", "error-body", "deflate-bomb", "sse-unterminated", "flood")
)
_MB = 1 << 20


@dataclass
class Target:
    port: int
    key: str
    scale: float
    hold: float

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def count(self, full: int) -> int:
        return max(1, round(full * self.scale))


Attack = Callable[[Target], Awaitable[str]]


async def idle_connections(target: Target) -> str:
    """2,050 TCP connections that send nothing."""
    opened = await _open_many(target, target.count(2050))
    await asyncio.sleep(target.hold)
    closed = sum(1 for _, reader in opened if reader.at_eof())
    _close(opened)
    return f"{len(opened)} opened, {closed} closed by the gateway within {target.hold:g} s"


async def half_bodies(target: Target) -> str:
    """Connections that stop part-way through a body."""
    opened = await _open_many(target, target.count(200))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {target.key}\r\n"
    )
    for writer, _ in opened:
        writer.write(head.encode() + b"Content-Length: 1000\r\n\r\n{")
    await asyncio.sleep(target.hold)
    answers = [await _status_line(reader, 0.01) for _, reader in opened]
    _close(opened)
    return _tally(answers)


async def h2c_aborts(target: Target) -> str:
    """h2c POSTs whose HEADERS have no END_STREAM, the socket closed after a second."""
    opened = await _open_many(target, target.count(20))
    for stream_id, (writer, _) in enumerate(opened):
        conn = _h2(
            target,
            stream_id,
            "POST",
            "/v1/chat/completions",
            [("content-type", "application/json")],
        )
        writer.write(conn.data_to_send())
    await asyncio.sleep(1.0)
    _close(opened)
    await asyncio.sleep(target.hold)
    return f"{len(opened)} streams reset mid-body"


async def unauthenticated_bodies(target: Target) -> str:
    """Bodies just under 32 MiB without a key."""
    size = max(_MB, round((32 * _MB - 1) * min(1.0, target.scale)))
    answers = await asyncio.gather(
        *(_unauthenticated(target, size) for _ in range(target.count(40)))
    )
    return f"{size // _MB} MiB each: " + _tally(answers)


async def h2_header_blocks(target: Target) -> str:
    """h2c streams each with an 8 MB header block."""
    size = max(100_000, round(8_000_000 * min(1.0, target.scale)))
    opened = await _open_many(target, target.count(100))
    for writer, _ in opened:
        conn = _h2(target, 0, "GET", "/healthz", [("x-pad", "p" * size)], end=True)
        writer.write(conn.data_to_send())
    await asyncio.sleep(target.hold)
    refused = sum(1 for _, reader in opened if reader.at_eof())
    _close(opened)
    return f"{len(opened)} blocks of {size // 1000} kB: {refused} connections ended by the gateway"


async def slow_readers(target: Target) -> str:
    """Clients that stop reading a 100,000-token stream."""
    socks = []
    body = orjson.dumps(
        {"model": "flood", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {target.key}\r\n"
    )
    for _ in range(target.count(10)):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, target.port))
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        socks.append(sock)
    await asyncio.sleep(target.hold)
    for sock in socks:
        sock.close()
    return f"{len(socks)} streams left unread for {target.hold:g} s"


def upstream_attack(model: str, count: int) -> Attack:
    async def attack(target: Target) -> str:
        async with httpx.AsyncClient(timeout=120) as client:
            answers = await asyncio.gather(*(_chat(client, target, model) for _ in range(count)))
        return _tally(answers)

    attack.__doc__ = f"{count} requests to an upstream model '{model}'"
    return attack


async def invented_model_ids(target: Target) -> str:
    """Requests for model ids nobody configured (vendor/model ids go to OpenRouter: hostile)."""
    async with httpx.AsyncClient(timeout=30) as client:
        before = len((await client.get(f"{target.url}/metrics")).content)
        ids = [f"vendor{n}/model-{n}" for n in range(target.count(5000))]
        for start in range(0, len(ids), 50):
            await asyncio.gather(
                *(_chat(client, target, model) for model in ids[start : start + 50])
            )
        after = len((await client.get(f"{target.url}/metrics")).content)
    return f"{len(ids)} ids: /metrics {before / 1000:.1f} kB -> {after / 1000:.1f} kB"


ATTACKS: dict[str, Attack] = {
    "idle connections": idle_connections,
    "half-sent bodies": half_bodies,
    "h2c aborted bodies": h2c_aborts,
    "unauthenticated 32 MiB bodies": unauthenticated_bodies,
    "h2 8 MB header blocks": h2_header_blocks,
    "clients that stop reading": slow_readers,
    "upstream 100 MB error body": upstream_attack("error-body", 3),
    "upstream deflate bomb": upstream_attack("deflate-bomb", 3),
    "upstream 64 MB unterminated SSE event": upstream_attack("sse-unterminated", 3),
    "/metrics invented model ids": invented_model_ids,
}


async def _open_many(
    target: Target, count: int
) -> list[tuple[asyncio.StreamWriter, asyncio.StreamReader]]:
    opened = []
    for _ in range(count):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, target.port), 5)
        except (OSError, TimeoutError):
            break
        opened.append((writer, reader))
    return opened


def _close(opened: list[tuple[asyncio.StreamWriter, asyncio.StreamReader]]) -> None:
    for writer, _ in opened:
        writer.transport.abort()


async def _status_line(reader: asyncio.StreamReader, within: float) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), within)
    except (TimeoutError, OSError):
        return "no answer"
    return line.decode(errors="replace").split(" ")[1] if line.startswith(b"HTTP/") else "closed"


def _tally(answers: list[str]) -> str:
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return ", ".join(f"{count}x {answer}" for answer, count in sorted(counts.items()))


class _PlainEncoder(hpack.Encoder):
    """Header blocks without Huffman coding: hpack's coder is quadratic in a value's length, so
    one 8 MB header took the benchmark itself hours to encode, and the attack never started."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


def _h2(
    target: Target, _: int, method: str, path: str, extra: list[tuple[str, str]], end: bool = False
) -> Any:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.encoder = _PlainEncoder()
    conn.initiate_connection()
    headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "g")]
    conn.send_headers(
        1, [*headers, ("authorization", f"Bearer {target.key}"), *extra], end_stream=end
    )
    return conn


async def _unauthenticated(target: Target, size: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, target.port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    block, sent = b"x" * _MB, 0
    try:
        while sent < size and not reader.at_eof():
            writer.write(block[: size - sent])
            sent += min(_MB, size - sent)
            await asyncio.wait_for(writer.drain(), 10)
    except (OSError, TimeoutError):
        pass
    answer = await _status_line(reader, 10)
    writer.transport.abort()
    return answer


async def _chat(client: httpx.AsyncClient, target: Target, model: str) -> str:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {target.key}"}
    try:
        async with client.stream(
            "POST", f"{target.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            async for _ in response.aiter_raw():
                pass
            return str(response.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def _good_client(
    target: Target, latencies: list[float], failures: list[str], stop: asyncio.Event
) -> None:
    """The well-behaved client, in a process of its own: in the attacker's process it would
    share an event loop with the attack's own reading (megabytes of answer, parsed by httpx)
    and time that instead of the gateway. Its answers come back when the attack is over."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _GOOD_CLIENT,
        target.url,
        target.key,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    await stop.wait()
    out, _ = await process.communicate(b"")  # its stdin closing (the attack over) stops it
    result = orjson.loads(out)
    latencies.extend(result["latencies"])
    failures.extend(result["failures"])


# A streamed chat request at a time until stdin closes; then {"latencies", "failures"} as JSON.
_GOOD_CLIENT = """
import asyncio, sys, time, httpx, orjson
url, key = sys.argv[1], sys.argv[2]
body = {"model": "good", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
async def main():
    latencies, failures, warm = [], [], False
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.read)
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.done():
            started = time.perf_counter()
            try:
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {key}"}) as answer:
                    async for _ in answer.aiter_raw():
                        pass
                    status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if warm:  # the first requests pay for httpx's lazy set-up, not the gateway
                latencies.append(time.perf_counter() - started)
            warm = True
            if status != "200":
                failures.append(status)
            await asyncio.sleep(0.01)
    sys.stdout.write(orjson.dumps({"latencies": latencies, "failures": failures}).decode())
asyncio.run(main())
"""


async def _measure(name: str, attack: Attack, target: Target, tree: ProcessTree) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    stop = asyncio.Event()
    workers = [pid for pid in tree.pids() if pid != tree.root]
    peak = 0.0

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max([peak, *(tree.rss_mib().get(pid, 0.0) for pid in workers)])
            await asyncio.sleep(0.1)

    good = asyncio.ensure_future(_good_client(target, latencies, failures, stop))
    sampling = asyncio.ensure_future(sample())
    await asyncio.sleep(0.5)  # the good client's process started and answered
    note = await attack(target)
    stop.set()
    await sampling
    await good
    await asyncio.sleep(1.0)
    before = tree.cpu_seconds()
    await asyncio.sleep(1.0)
    cpu_after = (tree.cpu_seconds() - before) * 100
    latencies.sort()
    p99 = (
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else None
    )
    return {
        "attack": name,
        "good_requests": len(latencies),
        "good_failures": len(failures),
        "good_p99_ms": p99,
        "worker_rss_peak_mib": peak,
        "cpu_after_pct": cpu_after,
        "note": note,
    }


def _start(
    workdir: Path, mb: int
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Target]:
    upstream_port, port = free_port(), free_port()
    python = str(ROOT / ".venv" / "bin" / "python")
    hostile = subprocess.Popen(
        [python, "-m", "benchmarks.hostile", str(upstream_port), str(mb)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
    )
    config = workdir / "abuse.toml"
    config.write_text(_CONFIG.format(port=upstream_port))
    env = clean_env(
        CALLMISSED_DATABASE_URL=f"sqlite:///{workdir / 'abuse.sqlite3'}",
        CALLMISSED_CONFIG=str(config),
        OPENROUTER_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        OPENROUTER_API_KEY="hostile",
    )
    command = [python, "-m", "callmissed"]
    created = subprocess.run(
        [*command, "keys", "create", "--name", "abuse"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    log = (workdir / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [*command, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_healthy(port, "/healthz", gateway, 30)
    return hostile, gateway, Target(port, created.stdout.strip().splitlines()[-1], 1.0, 5.0)


def _report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# abuse: scale {meta['scale']}, hold {meta['hold']} s, {meta['started']}",
        "",
        "| attack | good-client p99 | good failures | worker RSS peak | CPU after | outcome |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        p99 = f"{row['good_p99_ms']:.1f} ms" if row["good_p99_ms"] is not None else "no answer"
        lines.append(
            f"| {row['attack']} | {p99} | {row['good_failures']}/{row['good_requests']} | "
            f"{row['worker_rss_peak_mib']:.0f} MiB | {row['cpu_after_pct']:.0f} % | {row['note']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks abuse", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1: the issue's sizes")
    parser.add_argument(
        "--hold",
        type=float,
        default=35.0,
        help="seconds an attack holds on (past the body timeout)",
    )
    parser.add_argument("--attacks", help=f"comma-separated subset of: {', '.join(ATTACKS)}")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<time>-abuse)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.attacks.split(",")] if args.attacks else list(ATTACKS)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (
        Path(args.out).resolve() if args.out else ROOT / "benchmarks" / "results" / f"{stamp}-abuse"
    )
    workdir = out / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    hostile, gateway, target = _start(workdir, max(1, round(100 * min(1.0, args.scale))))
    target.scale, target.hold = args.scale, args.hold
    rows: list[dict[str, Any]] = []
    try:
        for name in names:
            print(f"{name} …", flush=True)
            rows.append(
                asyncio.run(_measure(name, ATTACKS[name], target, ProcessTree(gateway.pid)))
            )
    finally:
        gateway.terminate()
        gateway.wait(30)
        hostile.communicate(b"", timeout=10)
    meta = {"scale": args.scale, "hold": args.hold, "started": stamp}
    (out / "results.json").write_bytes(
        orjson.dumps({"meta": meta, "rows": rows}, option=orjson.OPT_INDENT_2)
    )
    report = _report(rows, meta)
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
