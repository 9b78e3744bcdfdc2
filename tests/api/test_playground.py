"""The browser playground, driven by a real headless Chromium against the real gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import httpx
import pytest

from tests.conftest import require_service


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    require_service("Chromium", "install Debian's chromium package (scripts/setup does, as root)")
    raise AssertionError("unreachable")


def _render(chromium: str, url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _cell(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    assert match, f"#{element_id} not in the page"
    return match.group(1)


def test_root_redirects_to_the_playground(gateway):
    response = httpx.get(f"{gateway.url}/")
    assert response.status_code == 302
    assert response.headers["location"] == "/playground"
    page = httpx.get(f"{gateway.url}/playground")
    assert page.headers["content-type"].startswith("text/html")


def test_playground_streams_an_answer_in_a_browser(gateway, chromium):
    url = f"{gateway.url}/playground?model=sim/instant&prompt=hi&effort=low&run=1#key={gateway.key}"
    dom = _render(chromium, url)
    assert 'data-state="done"' in dom
    assert _cell(dom, "output").startswith("Quicksort picks a pivot")
    assert _cell(dom, "stat-route") == "sim"
    assert _cell(dom, "stat-effort") == "low"
    assert _cell(dom, "stat-usage").endswith(" / 20 / 0")
    assert _cell(dom, "stat-ttfb").endswith("ms")


def test_playground_shows_errors_in_a_browser(gateway, chromium):
    dom = _render(
        chromium, f"{gateway.url}/playground?model=fake/error-429&run=1#key={gateway.key}"
    )
    assert 'data-state="error"' in dom
    assert "fake failure 429" in _cell(dom, "error")
