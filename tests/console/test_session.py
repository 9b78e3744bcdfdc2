"""Signing in to the console: the session cookie, CSRF-safe writes, and the console turned off."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import httpx
import pytest

from tests.accounting import ADMIN_TOKEN
from tests.conftest import stop_gateway
from tests.console.conftest import start_console_gateway


@pytest.fixture(scope="module")
def console(upstream, faults, tmp_path_factory):
    running = start_console_gateway(upstream, faults, tmp_path_factory.mktemp("session"))
    yield running
    stop_gateway(running)


def _sign_in(gateway, token: str = ADMIN_TOKEN) -> httpx.Response:
    return httpx.post(f"{gateway.url}/console/session", json={"token": token})


@contextlib.contextmanager
def _signed_in(gateway) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a console session, and the session's CSRF token."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.post("/console/session", json={"token": ADMIN_TOKEN})
        assert response.status_code == 200, response.text
        yield client, response.json()["csrf"]


def test_the_console_page_is_served_with_a_strict_policy(console):
    response = httpx.get(f"{console.url}/console")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    for asset in ("console.js", "util.js", "pages.js", "admin.js", "charts.js", "console.css"):
        assert httpx.get(f"{console.url}/console/{asset}").status_code == 200
    assert "cdn" not in response.text.lower() and "https://" not in response.text


def test_sign_in_sets_an_http_only_strict_cookie(console):
    response = _sign_in(console)
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("callmissed_console=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert ADMIN_TOKEN not in cookie
    assert response.json()["signed_in"] is True and response.json()["csrf"]


def test_a_wrong_token_is_refused(console):
    response = _sign_in(console, "not-the-token")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_sign_in_needs_a_json_body(console):
    response = httpx.post(f"{console.url}/console/session", data={"token": ADMIN_TOKEN})
    assert response.status_code == 400


def test_the_session_reads_the_admin_api(console):
    with _signed_in(console) as (client, _):
        assert client.get("/console/session").json()["signed_in"] is True
        assert client.get("/admin/keys").status_code == 200
        assert client.get("/admin/overview").status_code == 200
    assert httpx.get(f"{console.url}/admin/keys").status_code == 401
    assert httpx.get(f"{console.url}/console/session").json() == {"signed_in": False}


def test_a_write_needs_the_csrf_token(console):
    with _signed_in(console) as (client, csrf):
        refused = client.post("/admin/keys", json={"name": "csrf"})
        assert refused.status_code == 403
        wrong = client.post("/admin/keys", json={"name": "csrf"}, headers={"x-csrf-token": "x"})
        assert wrong.status_code == 403
        made = client.post("/admin/keys", json={"name": "csrf"}, headers={"x-csrf-token": csrf})
        assert made.status_code == 201


def test_a_write_from_another_origin_is_refused(console):
    with _signed_in(console) as (client, csrf):
        headers = {"x-csrf-token": csrf, "origin": "https://evil.example"}
        response = client.post("/admin/keys", json={"name": "x"}, headers=headers)
        assert response.status_code == 403
        same = {"x-csrf-token": csrf, "origin": console.url}
        assert client.post("/admin/keys", json={"name": "x"}, headers=same).status_code == 201


def test_a_forged_or_expired_cookie_is_refused(console):
    with _signed_in(console) as (client, _):
        value = client.cookies["callmissed_console"]
    expires, nonce, mac = value.split(".")
    for forged in (f"{int(expires) + 3600}.{nonce}.{mac}", f"{expires}.{nonce}.{mac[:-2]}AA"):
        response = httpx.get(
            f"{console.url}/admin/keys", headers={"cookie": f"callmissed_console={forged}"}
        )
        assert response.status_code == 401


def test_sign_out_ends_the_session_in_the_browser(console):
    with _signed_in(console) as (client, csrf):
        response = client.delete("/console/session", headers={"x-csrf-token": csrf})
        assert response.status_code == 200
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert client.get("/admin/keys").status_code == 401


def test_too_many_wrong_tokens_are_slowed_down(upstream, faults, tmp_path):
    gateway = start_console_gateway(upstream, faults, tmp_path)
    try:
        statuses = [_sign_in(gateway, f"guess-{n}").status_code for n in range(12)]
        assert statuses[:10] == [401] * 10
        assert statuses[10:] == [429, 429]
        assert _sign_in(gateway).status_code == 429  # even the right one, for a while
    finally:
        stop_gateway(gateway)


def test_over_tls_the_cookie_is_secure(upstream, faults, tmp_path):
    from tests.test_http2 import self_signed

    ca, cert, key = self_signed(tmp_path)
    gateway = start_console_gateway(
        upstream, faults, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        context = ssl.create_default_context(cafile=str(ca))
        response = httpx.post(
            f"{gateway.url}/console/session", json={"token": ADMIN_TOKEN}, verify=context
        )
        assert response.status_code == 200
        assert "; Secure" in response.headers["set-cookie"]
    finally:
        stop_gateway(gateway)


def test_without_an_admin_token_the_console_says_how_to_turn_it_on(gateway):
    response = httpx.get(f"{gateway.url}/console")
    assert response.status_code == 403
    assert "CALLMISSED_ADMIN_TOKEN" in response.text
    session = httpx.post(f"{gateway.url}/console/session", json={"token": "anything"})
    assert session.status_code == 403
    assert session.json()["error"]["code"] == "admin_disabled"
    assert httpx.get(f"{gateway.url}/admin/overview").status_code == 403
