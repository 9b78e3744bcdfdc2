"""Run an aiohttp app on 127.0.0.1, port 0, in a background thread: the fakes' one server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web

__all__ = ["serve_in_thread"]


def serve_in_thread(app: web.Application) -> tuple[str, Callable[[], None]]:
    """Start `app`; return its base URL and a function that stops it (and its thread)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    started: list[tuple[web.AppRunner, str]] = []

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.append((runner, f"http://127.0.0.1:{port}"))
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the fake server did not start")
    runner, url = started[0]

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return url, stop
