"""Who may use the admin API: the admin token as a bearer token, or a console session cookie.

Signing in with CALLMISSED_ADMIN_TOKEN sets a cookie (HttpOnly, SameSite=Strict, Path=/, Secure
over TLS) holding an expiry and a random id, signed with a key derived from the admin token:
any worker or replica with the same token checks it without shared state, and changing the
token ends every session. Writes made with the cookie also need the session's CSRF token in an
`x-csrf-token` header (which only the console's own pages can read) and, when the browser sends
an Origin, one matching the Host. The token itself never goes in a URL or browser storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from callmissed.auth import bearer_matches
from callmissed.errors import AdminDisabled, AuthenticationFailed, PermissionDenied, RateLimited

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SESSION_SECONDS",
    "Session",
    "SignIns",
    "admit",
    "clear_cookie",
    "read_session",
    "session_cookie",
]

COOKIE = "callmissed_console"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    expires_at: int
    csrf: str


def admit(token: str | None, headers: Mapping[str, str], write: bool) -> Session | None:
    """Let an admin request through, from its headers alone, or raise: the admin token as a
    bearer token (None: no session), or a console session whose writes carry its CSRF token
    and a same-origin Origin. `token` is CALLMISSED_ADMIN_TOKEN."""
    if token is None:
        raise AdminDisabled("The admin API is off: set CALLMISSED_ADMIN_TOKEN to turn it on.")
    if bearer_matches(headers.get("authorization"), token):
        return None
    session = read_session(token, headers.get("cookie"))
    if session is None:
        raise AuthenticationFailed(
            "The admin API needs 'Authorization: Bearer <admin token>' or a console session."
        )
    if write:
        _check_same_origin(headers)
        given = headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise PermissionDenied(f"A console write needs its session's {CSRF_HEADER} header.")
    return session


def session_cookie(token: str, secure: bool, now: float | None = None) -> tuple[str, Session]:
    """A new session: its Set-Cookie header value and what it allows."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    value = f"{expires}.{secrets.token_urlsafe(18)}"
    signed = f"{value}.{_sign(token, value)}"
    attributes = f"; Path=/; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={signed}{attributes}{'; Secure' if secure else ''}", Session(
        expires, _csrf(token, value)
    )


def clear_cookie(secure: bool) -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}"


def read_session(token: str, cookies: str | None, now: float | None = None) -> Session | None:
    """The session in a Cookie header, if it is ours, intact and unexpired."""
    value = _cookie_value(cookies)
    if value is None:
        return None
    body, _, mac = value.rpartition(".")
    expires, _, nonce = body.partition(".")
    if not (expires.isdigit() and nonce and mac):
        return None
    if not hmac.compare_digest(mac.encode(), _sign(token, body).encode()):
        return None
    if int(expires) <= (now if now is not None else time.time()):
        return None
    return Session(int(expires), _csrf(token, body))


class SignIns:
    """Refuses sign-ins for a while after too many wrong tokens (per process): guessing a long
    admin token is hopeless anyway; this keeps a guesser from trying at full speed."""

    def __init__(self, allowed: int = 10, window: float = 60.0) -> None:
        self._allowed = allowed
        self._window = window
        self._failures: deque[float] = deque()

    def check(self) -> None:
        now = time.monotonic()
        while self._failures and self._failures[0] <= now - self._window:
            self._failures.popleft()
        if len(self._failures) >= self._allowed:
            wait = self._failures[0] + self._window - now
            raise RateLimited(
                "Too many wrong admin tokens; try again in a minute.", retry_after=max(wait, 1)
            )

    def failed(self) -> None:
        self._failures.append(time.monotonic())


def _check_same_origin(headers: Mapping[str, str]) -> None:
    origin = headers.get("origin")
    if origin is None:
        return  # not a browser's cross-site request: those carry one (and no cookie, Strict)
    hosts = {headers.get(name) for name in ("host", ":authority", "x-forwarded-host")}
    if origin.partition("://")[2].rstrip("/") not in hosts - {None}:
        raise PermissionDenied("A console write must come from the console's own origin.")


def _cookie_value(cookies: str | None) -> str | None:
    if not cookies:
        return None
    for part in cookies.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"callmissed console session v1", hashlib.sha256).digest()


def _sign(token: str, value: str) -> str:
    mac = hmac.new(_key(token), value.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _csrf(token: str, value: str) -> str:
    return _sign(token, f"csrf:{value}")
