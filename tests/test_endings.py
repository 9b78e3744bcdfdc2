"""callmissed.endings: every way a committed stream ends, what each one bills, tells health and
counts — read in one place, tested in one place.

The parts are the real ones — a SQLite store, the ledger and its journal, credits and a metered
key, relay.ChatStream, health, metrics, deadlines — and only the upstream's bytes are scripted
(a stand-in for upstream.UpstreamResponse, as the simulator is one). Prices: 1 micro-credit per
prompt token, 2 per output token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from callmissed.accounting.credits import Accounting
from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import PriceBook
from callmissed.accounting.ratelimit import MemoryLimiter
from callmissed.accounting.settlement import Charge
from callmissed.accounting.wallet import Wallets
from callmissed.auth import Authenticator, create_key
from callmissed.deadlines import Deadlines
from callmissed.endings import Ending, StreamOwner, discard_loser
from callmissed.errors import ShuttingDown
from callmissed.health import Health
from callmissed.metrics import Metrics
from callmissed.providers import REGISTRY
from callmissed.relay import ChatStream
from callmissed.settings import ModelSettings, Prices, ProviderSettings, Resilience, Route
from callmissed.store import open_store

ROUTE = Route("local", "scripted")
MODEL = ModelSettings("priced", (ROUTE,), "passthrough", prices=Prices(1.0, 1.0, 2.0))
PROVIDER = REGISTRY["openai"](ProviderSettings("local", "openai", "http://127.0.0.1:1/v1"))
BODY = {"model": "priced", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}
PROMPT = 4 + 3  # the estimate of BODY's one message
PAUSE = object()  # the script waits here until the stream is closed or cancelled


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    payload = {"id": "gen-42", "object": "chat.completion.chunk", "choices": choices, **extra}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


HELLO = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hello"})]
REST = [_chunk({"content": " world"}), _chunk({}, "stop")]
USAGE = _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
ERROR = _chunk({"content": ""}, "error", error={"code": 502, "message": "Provider error"})


class Script:
    """The upstream's side of one streamed answer: `frames` read one at a time."""

    status = 200
    retry_after = None
    http_version = "HTTP/1.1"

    def __init__(self, frames: list[Any]) -> None:
        self._frames = list(frames)
        self.closed = False

    async def receive(self) -> bytes:
        if not self._frames or self.closed:
            return b""
        frame = self._frames.pop(0)
        if frame is PAUSE:
            await asyncio.sleep(3600)
        return frame  # type: ignore[no-any-return]

    async def read(self, max_bytes: int | None = None) -> bytes:
        raise AssertionError("a stream is never read whole")

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.closed = True


@dataclass
class World:
    accounting: Accounting
    ledger: Ledger
    store: Any
    key_id: int
    principal: Any
    health: Health = field(default_factory=lambda: Health(Resilience()))
    metrics: Metrics = field(default_factory=Metrics)
    deadlines: Deadlines = field(default_factory=Deadlines)
    released: int = 0

    async def open(
        self, frames: list[Any], idle: float = 60.0
    ) -> tuple[ChatStream, StreamOwner, Charge]:
        """A charge, a started stream over `frames`, and its owner: as failover commits one."""
        charge = await self.accounting.admit(self.principal, MODEL, BODY, f"req_{time.time_ns()}")
        stream = ChatStream(PROVIDER, Script(frames), include_usage=True)  # type: ignore[arg-type]
        await stream.start()
        charge.routed(ROUTE, stream=True)
        loop = asyncio.get_running_loop()
        owner = StreamOwner(
            stream,
            charge,
            ROUTE,
            MODEL.name,
            (self.health, self.metrics, self.deadlines),
            idle,
            loop.time() + 60,
            self._release,
        )
        return stream, owner, charge

    def _release(self) -> None:
        self.released += 1

    async def rows(self) -> list[dict[str, Any]]:
        await self.ledger.flush()
        rows: list[dict[str, Any]] = await self.store.recent_usage(self.key_id, 100)
        return rows


def scenario(tmp_path: Path, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
        await store.start()
        wallets = Wallets(store)
        ledger = Ledger(store, tmp_path / "ledger", wallets)
        await ledger.start()
        auth = Authenticator(store)
        key, record = await create_key(store, "k", 10**6)
        principal = await auth.authenticate(f"Bearer {key}")
        prices = PriceBook({}, {}, {})
        accounting = Accounting(store, ledger, wallets, MemoryLimiter(), auth, prices)
        try:
            await body(World(accounting, ledger, store, record.id, principal))
        finally:
            await ledger.close()
            await store.close()

    asyncio.run(main())


async def read_all(stream: ChatStream) -> str | None:
    """What an edge does: read every batch; the error that ended the stream, if one did."""
    try:
        async for _ in stream.aiter_batches():
            pass
    except Exception as exc:
        return type(exc).__name__
    finally:
        stream.close()
    return None


def test_done_bills_the_upstreams_usage_once(tmp_path):
    async def body(world: World) -> None:
        stream, owner, _ = await world.open([*HELLO, *REST, USAGE, b"data: [DONE]\n\n"])
        assert await read_all(stream) is None
        stream.close()  # the edge's on_close too: still one ending
        assert owner.ending(stream) is Ending.DONE
        [row] = await world.rows()
        assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (200, 5, 2)
        assert row["cost"] == 5 * 1 + 2 * 2
        assert row["upstream_id"] == "gen-42"
        assert world.released == 1
        assert world.metrics.value("callmissed_requests_total", "priced", "ok") == 1

    scenario(tmp_path, body)


def test_a_client_that_leaves_pays_the_prompt_and_the_output_it_got(tmp_path):
    async def body(world: World) -> None:
        stream, owner, _ = await world.open([*HELLO, PAUSE])
        batches = cast(AsyncGenerator[Any, None], stream.aiter_batches())
        await anext(batches)  # "Hello" reached the client
        stream.close()  # then it hung up: the edge's on_close
        await batches.aclose()
        assert owner.ending(stream) is Ending.CLIENT_LEFT
        [row] = await world.rows()
        assert (row["status"], row["error_code"]) == (499, "client_closed")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT, 1)
        assert row["cost"] == PROMPT * 1 + 1 * 2
        assert world.health.get(ROUTE).failures_in_row == 0

    scenario(tmp_path, body)


def test_an_upstream_failure_bills_only_the_output_delivered_and_counts_against_the_route(
    tmp_path,
):
    async def body(world: World) -> None:
        stream, owner, _ = await world.open([*HELLO, ERROR])
        assert await read_all(stream) == "UpstreamError"
        assert owner.ending(stream) is Ending.FAILED
        [row] = await world.rows()
        assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (502, 0, 1)
        assert row["cost"] == 2
        assert world.health.get(ROUTE).failures_in_row == 1
        assert world.metrics.value("callmissed_stream_errors_total", "local:scripted") == 1

    scenario(tmp_path, body)


def test_a_silent_upstream_times_out_and_bills_only_the_output_delivered(tmp_path):
    async def body(world: World) -> None:
        stream, owner, _ = await world.open([*HELLO, PAUSE], idle=0.05)
        assert await read_all(stream) == "UpstreamTimeout"
        assert owner.ending(stream) is Ending.TIMED_OUT
        [row] = await world.rows()
        assert (row["status"], row["error_code"], row["cost"]) == (504, "upstream_timeout", 2)
        assert world.health.get(ROUTE).failures_in_row == 1

    scenario(tmp_path, body)


def test_shutdown_ends_a_stream_billing_only_the_output_delivered(tmp_path):
    async def body(world: World) -> None:
        stream, owner, _ = await world.open([*HELLO, PAUSE])
        reading = asyncio.ensure_future(read_all(stream))
        await asyncio.sleep(0.01)
        owner.abort(ShuttingDown("The server is shutting down."))
        assert await reading == "ShuttingDown"
        assert owner.ending(stream) is Ending.DRAINED
        [row] = await world.rows()
        assert (row["status"], row["error_code"], row["cost"]) == (503, "shutting_down", 2)
        assert world.health.get(ROUTE).failures_in_row == 0  # our doing, not the route's

    scenario(tmp_path, body)


def test_a_stream_that_ended_before_it_was_owned_is_settled_once_when_it_is(tmp_path):
    async def body(world: World) -> None:
        # No token at all, then [DONE]: the stream ends inside start(), before it is owned.
        stream, owner, _ = await world.open([HELLO[0] + b"data: [DONE]\n\n"])
        assert owner.ending(stream) is Ending.DONE
        assert world.released == 1  # failover's slot is free at once, not at the deadline
        assert len(world.deadlines) == 0  # and no watchdog is left armed
        stream.close()
        [row] = await world.rows()
        assert (row["status"], row["cost"]) == (200, PROMPT)  # the upstream took the prompt

    scenario(tmp_path, body)


def test_a_hedge_loser_is_closed_and_billed_nothing(tmp_path):
    async def body(world: World) -> None:
        script = Script([*HELLO, PAUSE])

        async def attempt() -> ChatStream:
            stream = ChatStream(PROVIDER, script, include_usage=True)  # type: ignore[arg-type]
            await stream.start()
            return stream

        task = asyncio.ensure_future(attempt())
        await asyncio.sleep(0.01)  # it opened its stream: it won, but too late
        discard_loser(task)
        await asyncio.sleep(0.01)
        assert script.closed
        assert await world.rows() == []

    scenario(tmp_path, body)


@pytest.mark.parametrize("delivered", [3, 50])
def test_output_is_never_billed_past_what_the_request_allowed(tmp_path, delivered):
    """max_tokens is 8: an estimate of the output (never its count) stays within what an
    upstream that obeys the request can have written."""

    async def body(world: World) -> None:
        text = "word " * delivered
        stream, _, _ = await world.open([HELLO[0], _chunk({"content": text}), PAUSE])
        batches = cast(AsyncGenerator[Any, None], stream.aiter_batches())
        await anext(batches)
        stream.close()
        await batches.aclose()
        [row] = await world.rows()
        assert row["completion_tokens"] == min(len(text) // 4, 8)

    scenario(tmp_path, body)
