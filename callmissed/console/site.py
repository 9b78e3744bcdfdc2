"""The console as the gateway serves it: its pages, its sign-in, and its API's routes.

`Console(gateway, peers).routes()` goes into app.py's route table; start() and close() bracket
its resources (the console's database connections, the retention schedule). The pages are
static files read once from callmissed/console/static/, served from memory; with no admin
token set, /console answers with a page saying how to turn it on.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from callmissed.console import fleet
from callmissed.console.api import ConsoleAPI
from callmissed.console.database import open_console_database
from callmissed.console.retention import Retention
from callmissed.console.session import (
    SignIns,
    admit,
    clear_cookie,
    read_session,
    session_cookie,
)
from callmissed.edge.web import Endpoint, Guard, Request, Response, json_response
from callmissed.errors import AdminDisabled, AuthenticationFailed, InvalidRequest
from callmissed.gateway import Gateway
from callmissed.peers import Peers

__all__ = ["Console"]

_JS = b"text/javascript; charset=utf-8"
_STATIC = {
    "console.css": b"text/css; charset=utf-8",
    "console.js": _JS,
    "util.js": _JS,
    "pages.js": _JS,
    "admin.js": _JS,
    "charts.js": _JS,
    "icon.svg": b"image/svg+xml",
}
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    b" connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = [
    (b"content-security-policy", _POLICY),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
_HTML = b"text/html; charset=utf-8"

Handler = Callable[[Request], Awaitable[Response]]


class Console:
    def __init__(self, gateway: Gateway, peers: Peers) -> None:
        self._gateway = gateway
        self._settings = gateway.settings
        self._db = open_console_database(gateway.settings.database_url)
        days = gateway.settings.accounting.retention_days
        self.retention = Retention(self._db, days, gateway.ledger.directory)
        self.api = ConsoleAPI(gateway, peers, self._db, self.retention)
        self._sign_ins = SignIns()
        folder = resources.files("callmissed.console").joinpath("static")
        self._files = {
            name: folder.joinpath(name).read_bytes() for name in [*_STATIC, "index.html"]
        }
        self._disabled = folder.joinpath("disabled.html").read_bytes()

        async def route_health(_: Any) -> dict[str, Any]:
            return fleet.worker_health(gateway)

        peers.serve(fleet.OP, route_health)

    def start(self) -> None:
        if self._db.persistent:
            self.retention.start()

    async def close(self) -> None:
        await self.retention.close()
        await self._db.close()

    def routes(self, read: Guard | None, write: Guard | None) -> dict[tuple[str, str], Endpoint]:
        """The console's pages and sign-in (open), and its API behind the admin guards."""
        api = self.api
        data: dict[str, Handler] = {
            "/admin/overview": api.overview,
            "/admin/requests": api.list_requests,
            "/admin/requests/*": api.retrieve_request,
            "/admin/routes": api.routes,
            "/admin/tags": api.tags,
            "/admin/usage/keys": api.key_usage,
            "/admin/facets": api.facets,
            "/admin/retention": api.retention,
        }
        return {
            ("GET", "/console"): Endpoint(self.page),
            ("GET", "/console/"): Endpoint(_redirect),
            **{("GET", f"/console/{name}"): Endpoint(self._static(name)) for name in _STATIC},
            **{(method, "/console/session"): Endpoint(self.session) for method in _SESSION},
            **{("GET", path): Endpoint(handler, guard=read) for path, handler in data.items()},
            ("POST", "/admin/retention"): Endpoint(api.retention, guard=write),
        }

    async def page(self, request: Request) -> Response:
        """The console's one page (it routes itself), or how to turn it on."""
        if self._settings.accounting.admin_token is None:
            return Response(403, self._disabled, list(_PAGE_HEADERS), _HTML)
        return Response(200, self._files["index.html"], list(_PAGE_HEADERS), _HTML)

    def _static(self, name: str) -> Handler:
        body, kind = self._files[name], _STATIC[name]

        async def serve(request: Request) -> Response:
            return Response(200, body, [(b"cache-control", b"no-cache")], kind)

        return serve

    async def session(self, request: Request) -> Response:
        """GET: whether this browser is signed in (and its CSRF token); POST {"token"}: sign in;
        DELETE: sign out."""
        token = self._settings.accounting.admin_token
        if token is None:
            raise AdminDisabled("The console is off: set CALLMISSED_ADMIN_TOKEN to turn it on.")
        secure = (
            bool(self._settings.tls_cert) or request.headers.get("x-forwarded-proto") == "https"
        )
        if request.method == "GET":
            session = read_session(token, request.headers.get("cookie"))
            if session is None:
                return _no_store({"signed_in": False})
            return _no_store(
                {"signed_in": True, "csrf": session.csrf, "expires_at": session.expires_at}
            )
        if request.method == "DELETE":
            if read_session(token, request.headers.get("cookie")) is not None:
                admit(token, request.headers, write=True)  # a sign-out is a write
            return _no_store({"signed_in": False}, [(b"set-cookie", clear_cookie(secure).encode())])
        return self._sign_in(request, token, secure)

    def _sign_in(self, request: Request, token: str, secure: bool) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise InvalidRequest('Sign in with a JSON body: {"token": "<admin token>"}.')
        self._sign_ins.check()
        body = request.json()
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not _same(given, token):
            self._sign_ins.failed()
            raise AuthenticationFailed("That is not the admin token (CALLMISSED_ADMIN_TOKEN).")
        cookie, session = session_cookie(token, secure)
        payload = {"signed_in": True, "csrf": session.csrf, "expires_at": session.expires_at}
        return _no_store(payload, [(b"set-cookie", cookie.encode())])


_SESSION = ("GET", "POST", "DELETE")


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _no_store(payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return json_response(payload, headers=[(b"cache-control", b"no-store"), *(headers or [])])


async def _redirect(request: Request) -> Response:
    return Response(302, b"", [(b"location", b"/console")], b"text/plain")
