"""A headless Chromium driven over the DevTools protocol, for tests of pages the gateway serves.

Just enough of the protocol for our tests: open a page, then evaluate JavaScript in it until a
condition holds. No extra packages: aiohttp speaks the WebSocket.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


class Browser:
    """`with Browser(path) as browser: browser.wait_for(url, js_condition)`."""

    def __init__(self, executable: str) -> None:
        self._executable = executable
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self._process: subprocess.Popen[str] | None = None
        self._http = ""

    def __enter__(self) -> Browser:
        self._process = subprocess.Popen(
            [self._executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            if match := re.search(r"DevTools listening on ws://([^/]+)/", line):
                self._http = f"http://{match.group(1)}"
                return self
        raise RuntimeError("Chromium did not start its DevTools server")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            assert self._process.stderr is not None
            self._process.stderr.close()
        self._profile.cleanup()

    def wait_for(
        self, url: str, condition: str, seconds: float = 30, then: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """Open `url`; poll until `condition` (a JS expression) is truthy; then, for each
        (action, condition) of `then`, evaluate the action (a click, say) and poll until its
        condition holds; return the page's facts."""
        return asyncio.run(self._wait_for(url, [("", condition), *then], seconds))

    def evaluate(self, url: str, condition: str, expression: str) -> Any:
        """Open `url`, wait until `condition` holds, and return the value of `expression`."""
        return asyncio.run(self._wait_for(url, [("", condition)], 30, expression))

    async def _wait_for(
        self,
        url: str,
        steps: list[tuple[str, str]],
        seconds: float,
        result: str = "",
    ) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{self._http}/json/new") as response:
                target = await response.json()
            async with session.ws_connect(target["webSocketDebuggerUrl"]) as socket:
                ids = itertools.count(1)
                # Navigating over the protocol keeps the URL whole, fragment included.
                await _call(socket, next(ids), "Page.navigate", {"url": url})
                for action, condition in steps:
                    if action:
                        await _evaluate(socket, next(ids), action)
                    deadline = time.monotonic() + seconds
                    while not await _evaluate(socket, next(ids), condition):
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{condition!r} never held on {url}")
                        await asyncio.sleep(0.05)
                return await _evaluate(socket, next(ids), result or _FACTS)


# What tests read back: the state and the text of every element with an id.
_FACTS = """(() => {
  const facts = {state: document.body.dataset.state || ""};
  for (const element of document.querySelectorAll("[id]")) facts[element.id] = element.textContent;
  return facts;
})()"""


async def _evaluate(
    socket: aiohttp.ClientWebSocketResponse, message_id: int, expression: str
) -> Any:
    params = {"expression": expression, "returnByValue": True}
    reply = await _call(socket, message_id, "Runtime.evaluate", params)
    return reply.get("result", {}).get("value")


async def _call(
    socket: aiohttp.ClientWebSocketResponse, message_id: int, method: str, params: dict[str, Any]
) -> dict[str, Any]:
    await socket.send_json({"id": message_id, "method": method, "params": params})
    while True:
        reply = await socket.receive_json()
        if reply.get("id") == message_id:
            return reply.get("result", {})  # type: ignore[no-any-return]
