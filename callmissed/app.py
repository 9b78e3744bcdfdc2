"""build_app(settings): the route table and the lifespan that builds every resource."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from callmissed import __version__
from callmissed.api import admin, anthropic, keys, openai
from callmissed.api.playground import playground_routes, redirect_home
from callmissed.asgi import ASGIApp
from callmissed.gateway import Gateway
from callmissed.settings import Settings, load_settings
from callmissed.web import App, Endpoint, Request, Response, StreamResponse, json_response

__all__ = ["build_app", "create_app"]

GatewayHandler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]


async def healthz(gateway: Gateway, request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__})


async def metrics(gateway: Gateway, request: Request) -> Response:
    """Prometheus text: requests, attempts, first-token times and breaker state per route."""
    text = gateway.metrics.render(gateway.health.all(), gateway.failover.inflight)
    return Response(200, text.encode(), content_type=b"text/plain; version=0.0.4; charset=utf-8")


def build_app(settings: Settings) -> App:
    gateway = Gateway(settings)

    def bind(handler: GatewayHandler) -> Callable[[Request], Awaitable[Response | StreamResponse]]:
        return functools.partial(handler, gateway)

    routes = {
        ("POST", "/v1/chat/completions"): Endpoint(bind(openai.create_chat_completion)),
        ("GET", "/v1/models"): Endpoint(bind(openai.list_models)),
        ("GET", "/v1/models/*"): Endpoint(bind(openai.retrieve_model)),
        ("POST", "/v1/messages"): Endpoint(bind(anthropic.create_message), dialect="anthropic"),
        ("POST", "/v1/messages/count_tokens"): Endpoint(
            bind(anthropic.count_tokens), dialect="anthropic"
        ),
        ("GET", "/v1/key"): Endpoint(bind(keys.retrieve_current_key)),
        **{
            (method, "/admin/keys"): Endpoint(bind(admin.keys_collection))
            for method in ("GET", "POST")
        },
        **{
            (method, "/admin/keys/*"): Endpoint(bind(admin.keys_item))
            for method in ("GET", "PATCH", "POST")
        },
        ("GET", "/healthz"): Endpoint(bind(healthz)),
        ("GET", "/metrics"): Endpoint(bind(metrics)),
        ("GET", "/"): Endpoint(redirect_home),
        **{("GET", path): Endpoint(handler) for path, handler in playground_routes().items()},
    }
    return App(routes, settings.max_body_bytes, gateway.start, gateway.close)


def create_app() -> ASGIApp:
    """The factory for an ASGI server (`callmissed serve` uses rsgi.create_app instead)."""
    return ASGIApp(build_app(load_settings()))
