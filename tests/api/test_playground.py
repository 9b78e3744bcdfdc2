"""The browser playground, driven by a real headless Chromium against the real gateway."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import Browser
from tests.conftest import require_service, start_gateway, stop_gateway
from tests.test_http2 import self_signed

FINISHED = "['done', 'error'].includes(document.body.dataset.state)"
SETTLED = "['ready', 'done', 'error'].includes(document.body.dataset.state)"
SEND = "document.getElementById('send').click()"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = next(
        (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
    )
    if executable is None:
        require_service(
            "Chromium", "install Debian's chromium package (scripts/setup does, as root)"
        )
    assert executable is not None
    with Browser(executable) as running:
        yield running


def test_root_redirects_to_the_playground(gateway):
    response = httpx.get(f"{gateway.url}/")
    assert response.status_code == 302
    assert response.headers["location"] == "/playground"
    page = httpx.get(f"{gateway.url}/playground")
    assert page.headers["content-type"].startswith("text/html")


def test_playground_streams_an_answer_in_a_browser(gateway, browser):
    url = f"{gateway.url}/playground?model=sim/instant&prompt=hi&effort=low&run=1#key={gateway.key}"
    page = browser.wait_for(url, SETTLED, then=[(SEND, FINISHED)])
    assert page["state"] == "done", page["error"]
    assert page["output"].startswith("Quicksort picks a pivot")
    assert page["stat-route"] == "sim"
    assert page["stat-effort"] == "low"
    assert page["stat-usage"].endswith(" / 20 / 0")
    assert page["stat-ttfb"].endswith("ms")


def test_playground_defaults_to_a_stream_from_auto_over_one_http2_connection(
    upstream, tmp_path, browser
):
    """The page's "Why the playground feels faster" table: stream: true, the auto model, one
    persistent HTTP/2 connection (which browsers speak only over TLS)."""
    _, cert, key = self_signed(tmp_path)
    tls = start_gateway(upstream, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        url = f"{tls.url}/playground#key={tls.key}"
        page = browser.wait_for(url, SETTLED, then=[(SEND, FINISHED)])
    finally:
        stop_gateway(tls)
    assert page["state"] == "done", page["error"]
    assert (page["model:value"], page["stream:value"]) == ("auto", True)
    assert page["stat-route"] == "openrouter"
    assert page["protocols"] == ["h2", "h2"]  # GET /v1/models, then the chat completion


def test_playground_shows_errors_in_a_browser(gateway, browser):
    page = browser.wait_for(
        f"{gateway.url}/playground?model=fake/error-400&run=1#key={gateway.key}",
        SETTLED,
        then=[(SEND, FINISHED)],
    )
    assert page["state"] == "error"
    assert "fake failure 400" in page["error"]


def test_a_link_readies_a_request_but_only_a_click_spends_the_stored_key(gateway, browser):
    browser.wait_for(  # the visitor used the playground once: their key is stored
        f"{gateway.url}/playground?model=sim/instant#key={gateway.key}",
        SETTLED,
        then=[(SEND, FINISHED)],
    )
    link = f"{gateway.url}/playground?model=sim/instant&prompt=a+costly+request&run=1"
    page = browser.wait_for(link, SETTLED)  # no key in the link: the stored one is filled in
    assert page["state"] == "ready"
    assert page["stat-status"] == "\u2013" and page["output"] == ""  # nothing was sent
    assert "press Send" in page["ready"]
    clicked = browser.wait_for(link, SETTLED, then=[(SEND, FINISHED)])
    assert clicked["state"] == "done", clicked["error"]
    assert clicked["stat-status"] == "200"


def test_the_playground_sends_security_headers(gateway):
    for path in ("/playground", "/playground/playground.js", "/playground/playground.css"):
        headers = httpx.get(f"{gateway.url}{path}").headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


def test_the_content_security_policy_holds_in_a_browser(gateway, browser):
    """The page works under its CSP (the tests above), and the CSP does bite: a script element
    injected into the page, as an XSS would, does not run."""
    injected = browser.evaluate(
        f"{gateway.url}/playground",
        SETTLED,
        "(() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = true'; document.body.append(s);"
        " return window.injected === true; })()",
    )
    assert injected is False
