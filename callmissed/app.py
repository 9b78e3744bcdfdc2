"""build_app(settings): the route table and the lifespan that builds every resource; and the
factories each server is handed (granian: create_rsgi_app; an ASGI server: create_app)."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

from callmissed import __version__
from callmissed.api import admin as admin_api, anthropic, embeddings, keys, openai, responses
from callmissed.api.playground import playground_routes, redirect_home
from callmissed.auth import Principal, bearer_matches
from callmissed.console.site import Console
from callmissed.edge.asgi import ASGIApp
from callmissed.edge.connections import Connections
from callmissed.edge.rsgi import RSGIApp
from callmissed.edge.web import (
    App,
    Endpoint,
    Guard,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from callmissed.errors import AuthenticationFailed
from callmissed.gateway import Gateway
from callmissed.health_peers import HealthPeers
from callmissed.history import History
from callmissed.peers import Peers
from callmissed.settings import Settings, load_settings

__all__ = [
    "Readiness",
    "build_app",
    "connect_peers",
    "create_app",
    "create_rsgi_app",
    "guards",
]

GatewayHandler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]


class Readiness:
    """Whether every worker the server started is serving. Until they all are, /healthz says
    "starting" (503), so whatever waits for it (a load balancer, a script, the tests) then finds
    them all: the console's fleet view and /metrics count every one. The other workers are
    asked through peers.py until they have all been serving once; a worker that dies later is
    started again by the server, and the server stays ready meanwhile."""

    OP = "serving"

    def __init__(self, peers: Peers, workers: int) -> None:
        self.workers = workers
        self._peers = peers
        self._serving = False  # this worker's start-up is over
        self._all = workers <= 1
        peers.serve(self.OP, self._answer)

    def serve(self) -> None:
        """This worker's start-up is over: it serves from now on."""
        self._serving = True

    async def serving(self) -> int:
        """How many of the server's workers serve: this one, and the others that say so."""
        if self._all:
            return self.workers
        answers = await self._peers.ask(self.OP)
        serving = 1 + sum(1 for value in answers.values if value is True)
        self._all = serving >= self.workers
        return serving

    async def _answer(self, _: Any) -> bool:
        return self._serving


async def healthz(readiness: Readiness, request: Request) -> Response:
    # `worker`: which process answered, with --workers N (each has its own connections).
    answer = {"status": "ok", "version": __version__, "worker": os.getpid()}
    serving = await readiness.serving()
    if serving < readiness.workers:
        starting = {"status": "starting", "serving": serving, "workers": readiness.workers}
        return json_response({**answer, **starting}, status=503)
    return json_response(answer)


async def metrics(gateway: Gateway, peers: Peers, request: Request) -> Response:
    """Prometheus text for the whole server: requests, attempts and first-token times of every
    worker; each route's breaker state (shared by the workers: health_peers.py). Open unless a
    token is set."""
    answers = await peers.ask("metrics")
    text = gateway.metrics.render(
        gateway.health.all(), gateway.failover.inflight, answers.values, answers.skipped
    )
    return Response(200, text.encode(), content_type=b"text/plain; version=0.0.4; charset=utf-8")


def guards(gateway: Gateway) -> dict[str, Guard | None]:
    """Each kind of credential an endpoint may demand, checked from the headers alone, so the
    body of a request that fails is never read (docs/security.md)."""
    authenticate = gateway.auth.authenticate
    accounting = gateway.settings.accounting

    async def bearer_key(headers: dict[str, str]) -> Principal:
        authorization = headers.get("authorization")
        if authorization is None:  # say so if the key came as the Anthropic SDK sends it
            return await authenticate(None, headers.get("x-api-key"), bearer_only=True)
        return await authenticate(authorization, bearer_only=True)

    async def any_key(headers: dict[str, str]) -> Principal:
        # The Anthropic SDK sends `api_key` as x-api-key and `auth_token` as a bearer token.
        return await authenticate(headers.get("authorization"), headers.get("x-api-key"))

    async def admin(headers: dict[str, str]) -> None:
        admin_api.authorize(accounting.admin_token, headers)

    async def admin_write(headers: dict[str, str]) -> None:
        admin_api.authorize(accounting.admin_token, headers, write=True)

    async def metrics_token(headers: dict[str, str]) -> None:
        token = accounting.metrics_token
        if token is not None and not bearer_matches(headers.get("authorization"), token):
            raise AuthenticationFailed(
                "GET /metrics needs 'Authorization: Bearer <metrics token>' "
                "(CALLMISSED_METRICS_TOKEN)."
            )

    return {
        "bearer": bearer_key,
        "key": any_key,
        "admin": admin,
        "admin_write": admin_write,
        "metrics": metrics_token if accounting.metrics_token is not None else None,
    }


def connect_peers(gateway: Gateway) -> tuple[Peers, HealthPeers]:
    """This worker's link to the server's other workers, which the gateway built: its
    accounting asks them for a key's idle credit and to drop cached keys, and answers the same
    (accounting/holds.py, accounting/keys.py); here, what they may ask of its metrics, and the
    routes' health, which they share."""
    peers = gateway.peers
    health = HealthPeers(gateway.health, peers)

    async def snapshot(_: Any) -> dict[str, Any]:
        return gateway.metrics.snapshot(gateway.failover.inflight)

    peers.serve("metrics", snapshot)
    return peers, health


def build_app(settings: Settings, gateway: Gateway | None = None, workers: int = 1) -> App:
    """The app over `gateway` (a new one for `settings` unless given: benchmarks.inprocess),
    one of the `workers` processes the server starts (what /healthz waits for)."""
    gateway = gateway or Gateway(settings)
    peers, health = connect_peers(gateway)
    readiness = Readiness(peers, workers)
    history = History(gateway.store, settings.responses)
    console = Console(gateway, peers)

    def bind(handler: GatewayHandler) -> Callable[[Request], Awaitable[Response | StreamResponse]]:
        return functools.partial(handler, gateway)

    async def startup() -> None:
        await gateway.start()
        await peers.start()  # after the ledger: a peer's journal tells whether it is alive
        await health.start()
        await history.start()
        console.start()
        readiness.serve()

    async def shutdown() -> None:
        await console.close()
        await history.close()
        await peers.close()
        await gateway.close()

    guard = guards(gateway)
    bearer, key, admin, write = guard["bearer"], guard["key"], guard["admin"], guard["admin_write"]
    routes = {
        ("POST", "/v1/chat/completions"): Endpoint(
            bind(openai.create_chat_completion), guard=bearer
        ),
        ("POST", "/v1/embeddings"): Endpoint(bind(embeddings.create_embedding), guard=bearer),
        ("GET", "/v1/models"): Endpoint(bind(openai.list_models), guard=bearer),
        ("GET", "/v1/models/*"): Endpoint(bind(openai.retrieve_model), guard=bearer),
        ("POST", "/v1/messages"): Endpoint(
            bind(anthropic.create_message), dialect="anthropic", guard=key
        ),
        ("POST", "/v1/messages/count_tokens"): Endpoint(
            bind(anthropic.count_tokens), dialect="anthropic", guard=key
        ),
        ("POST", "/v1/responses"): Endpoint(
            functools.partial(responses.create_response, gateway, history), guard=bearer
        ),
        ("GET", "/v1/responses/*"): Endpoint(
            functools.partial(responses.retrieve_response, gateway, history), guard=bearer
        ),
        ("DELETE", "/v1/responses/*"): Endpoint(
            functools.partial(responses.delete_response, gateway, history), guard=bearer
        ),
        ("GET", "/v1/key"): Endpoint(bind(keys.retrieve_current_key), guard=key),
        ("GET", "/admin/keys"): Endpoint(bind(admin_api.keys_collection), guard=admin),
        ("POST", "/admin/keys"): Endpoint(bind(admin_api.keys_collection), guard=write),
        **{
            (method, "/admin/keys/*"): Endpoint(
                functools.partial(admin_api.keys_item, gateway),
                guard=admin if method == "GET" else write,
            )
            for method in ("GET", "PATCH", "POST")
        },
        ("GET", "/healthz"): Endpoint(functools.partial(healthz, readiness)),
        ("GET", "/metrics"): Endpoint(
            functools.partial(metrics, gateway, peers), guard=guard["metrics"]
        ),
        ("GET", "/"): Endpoint(redirect_home),
        **{("GET", path): Endpoint(handler) for path, handler in playground_routes().items()},
        **console.routes(admin, write),
    }
    limits = settings.edge
    return App(routes, settings.max_body_bytes, limits.max_open_body_bytes, startup, shutdown)


def create_app() -> ASGIApp:
    """The factory for an ASGI server (`callmissed serve` uses create_rsgi_app instead): its
    workers, if it starts several, are not known here, so /healthz waits for none of them."""
    settings = load_settings()
    return ASGIApp(build_app(settings), settings.edge)


def create_rsgi_app() -> RSGIApp:
    """The factory `callmissed serve` hands to granian: settings from the environment."""
    settings = load_settings()
    app = build_app(settings, workers=settings.workers)  # `callmissed serve` starts that many
    return RSGIApp(app, Connections(settings.edge, settings.port))
