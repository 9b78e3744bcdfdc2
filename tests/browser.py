"""A headless Chromium driven over the DevTools protocol, for tests of pages the gateway serves.

Just enough of the protocol for our tests: open a page, then evaluate JavaScript in it until a
condition holds (`wait_for`), or keep one tab open and drive it step by step, taking screenshots
(`page()`). No extra packages: aiohttp speaks the WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--ignore-certificate-errors",  # the tests' gateways serve TLS with a throwaway CA
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

    @contextlib.contextmanager
    def page(self, width: int = 1440, height: int = 900) -> Iterator[Page]:
        """One tab for a whole test: navigate, evaluate, wait and take screenshots in it."""
        tab = Page(self._http, width, height)
        try:
            yield tab
        finally:
            tab.close()

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


class Page:
    """A tab kept open across calls, on an event loop of its own (tests are synchronous).

    Exceptions thrown by the page's scripts are collected in `errors`."""

    def __init__(self, http: str, width: int, height: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._size = (width, height)
        self.errors: list[str] = []
        self._session, self._socket = self._run(self._open(http))

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    async def _open(self, http: str) -> tuple[aiohttp.ClientSession, Any]:
        session = aiohttp.ClientSession()
        async with session.put(f"{http}/json/new") as response:
            target = await response.json()
        socket = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self._socket = socket
        await self._call("Runtime.enable", {})
        width, height = self._size
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        await self._call("Emulation.setDeviceMetricsOverride", metrics)
        return session, socket

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._socket.send_json({"id": message_id, "method": method, "params": params})
        while True:
            reply = await self._socket.receive_json()
            if reply.get("method") == "Runtime.exceptionThrown":
                details = reply["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or str(details))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]

    def goto(self, url: str) -> None:
        self._run(self._call("Page.navigate", {"url": url}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        reply = self._run(self._call("Runtime.evaluate", params))
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    def wait(self, condition: str, seconds: float = 15) -> float:
        """Poll until `condition` (a JS expression) is truthy; the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            with contextlib.suppress(AssertionError):  # the page may be mid-navigation
                if self.evaluate(condition):
                    return time.monotonic() - began
            time.sleep(0.05)
        raise AssertionError(f"{condition!r} never held (page: {self.evaluate('location.href')})")

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = self.evaluate(_FACTS)
        return facts

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (as tall as its content) at `path`."""
        width, height = self._size
        tall = self.evaluate("document.documentElement.scrollHeight") or height
        metrics = {
            "width": width,
            "height": max(height, tall),
            "deviceScaleFactor": 1,
            "mobile": False,
        }
        self._run(self._call("Emulation.setDeviceMetricsOverride", metrics))
        shot = self._run(self._call("Page.captureScreenshot", {"format": "png"}))
        metrics["height"] = height
        self._run(self._call("Emulation.setDeviceMetricsOverride", metrics))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        async def close() -> None:
            await self._socket.close()
            await self._session.close()

        self._run(close())
        self._loop.close()


# What tests read back: the state, the text of every element with an id (a form control's value,
# or whether it is checked, as "<id>:value"), and the protocol each request to /v1/ went over.
_FACTS = """(() => {
  const facts = {state: document.body.dataset.state || ""};
  for (const element of document.querySelectorAll("[id]")) {
    facts[element.id] = element.textContent;
    if ("value" in element) {
      facts[`${element.id}:value`] = element.type === "checkbox" ? element.checked : element.value;
    }
  }
  facts.protocols = performance.getEntriesByType("resource")
    .filter((entry) => new URL(entry.name).pathname.startsWith("/v1/"))
    .map((entry) => entry.nextHopProtocol);
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
