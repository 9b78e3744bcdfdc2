"""The browser playground: three static files, read once at start-up and served from memory.

Every one goes out with a Content-Security-Policy that allows only this origin's own script,
style and API (no inline code, so an injected element cannot run), refuses to be framed
(clickjacking a page that holds a key), and nosniff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from callmissed.edge.web import Request, Response

__all__ = ["playground_routes", "redirect_home"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

_FILES = {
    "/playground": ("index.html", b"text/html; charset=utf-8"),
    "/playground/playground.js": ("playground.js", b"text/javascript; charset=utf-8"),
    "/playground/playground.css": ("playground.css", b"text/css; charset=utf-8"),
}


def playground_routes() -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """GET handlers by path, each answering with its file's bytes."""
    folder = resources.files("callmissed").joinpath("playground")
    return {
        path: _static(folder.joinpath(name).read_bytes(), kind)
        for path, (name, kind) in _FILES.items()
    }


def _static(body: bytes, content_type: bytes) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return Response(200, body, _HEADERS, content_type)

    return serve


async def redirect_home(request: Request) -> Response:
    """GET / sends a browser to the playground."""
    return Response(302, b"", [(b"location", b"/playground")], b"text/plain")
