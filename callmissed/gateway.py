"""The use-cases behind every API edge: route a chat request and relay the upstream's answer.

Each edge (api/openai.py, api/anthropic.py) authenticates and parses its own dialect, then calls
`complete()` or `open_stream()` with an OpenAI-format body. Until the first chunk arrives any
failure is raised as a normal error (a real HTTP status); after that it travels in-band.
Which route answers (fallback, hedging, timeouts) is failover.py's job; how each ending is
billed, endings.py's. `embed()` is the same for POST /v1/embeddings (embedding.py does the
batches).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callmissed.accounting.credits import Accounting
from callmissed.accounting.keys import KeyAdmin
from callmissed.accounting.ledger import Ledger, ledger_directory
from callmissed.accounting.price_list import FETCH_TIMEOUT, MAX_LIST_BYTES, PriceList
from callmissed.accounting.pricing import PriceBook
from callmissed.accounting.ratelimit import open_limiter
from callmissed.accounting.settlement import Charge
from callmissed.accounting.wallet import Wallets
from callmissed.auth import Authenticator, Principal
from callmissed.deadlines import Deadlines
from callmissed.embedding import embed_on, plan_embedding
from callmissed.errors import InvalidRequest, ShuttingDown
from callmissed.exchange import Headers, StartStream, new_request_id
from callmissed.failover import Failover, Won
from callmissed.formats.embeddings import EmbeddingRequest
from callmissed.health import Health, route_name
from callmissed.keepalive import KeepAlive
from callmissed.metrics import Metrics
from callmissed.observe import Observer
from callmissed.peers import Peers
from callmissed.providers import REGISTRY, Provider
from callmissed.reasoning import apply_reasoning_effort
from callmissed.relay import CHAT_COMPLETIONS, ChatStream, UpstreamAPI
from callmissed.routing import Router, Target
from callmissed.settings import ModelSettings, Settings
from callmissed.shutdown import on_sigterm
from callmissed.store import Store, open_store
from callmissed.timing import RequestTrace
from callmissed.upstream import Upstream

__all__ = ["Gateway", "RouteInfo"]


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class RouteInfo:
    """Where a request went; sent back to the client as headers.

    `provider`/`upstream_model` name the one route that answered: bill only it. Failed attempts
    and a hedge's cancelled loser delivered nothing to the client (`fallbacks`, `attempts`).
    """

    provider: str
    upstream_model: str
    reasoning_effort: str | None
    attempts: int = 1  # upstream requests made for this one, the winner included
    fallbacks: tuple[str, ...] = ()  # "provider:model outcome" of each failed attempt
    hedged: bool = False
    limits: tuple[tuple[bytes, bytes], ...] = ()  # the key's x-ratelimit-* (accounting/credits.py)
    prompt_estimate: int = 0  # the prompt's tokens as accounting/credits.py estimated them

    @classmethod
    def of(cls, won: Won[Any], reasoning_effort: str | None, charge: Charge) -> RouteInfo:
        """The route that won, and the key's rate-limit state from `charge`."""
        route = won.target.route
        return cls(
            route.provider,
            route.upstream_model,
            reasoning_effort,
            won.attempts,
            won.failed,
            won.hedged,
            tuple(charge.headers()),
            charge.prompt_estimate,
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-callmissed-route", self.provider.encode()),
            (b"x-callmissed-upstream-model", self.upstream_model.encode()),
        ]
        if self.reasoning_effort is not None:
            headers.append((b"x-callmissed-reasoning-effort", self.reasoning_effort.encode()))
        if self.attempts > 1:
            headers.append((b"x-callmissed-attempts", str(self.attempts).encode()))
        headers.extend(self.limits)
        return headers


class Gateway:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.providers: dict[str, Provider] = {
            name: REGISTRY[provider.type](provider) for name, provider in settings.providers.items()
        }
        self.router = Router(settings, self.providers)
        self.store = store or open_store(settings.database_url)
        self.auth = Authenticator(self.store)
        self.observer = Observer(settings.observability)  # access log, traces (observe.py)
        wallets = Wallets(self.store)
        self.ledger = Ledger(self.store, ledger_directory(settings), wallets, self.observer.settled)
        ledger = self.ledger
        # The server's other workers (app.py starts the channel after the ledger's journal).
        self.peers = Peers(ledger.directory, ledger.instance, ledger.alive)
        self.limiter = open_limiter(settings, ledger.instance, ledger.alive)
        self.upstream = Upstream(settings)
        self.price_lists = self._price_lists()
        accounting = settings.accounting
        markup = accounting.pricing.markup
        prices = PriceBook(accounting.prices, self.providers, self.price_lists, markup)
        self.accounting = Accounting(
            self.store, ledger, wallets, self.limiter, self.auth, prices, self.peers
        )
        self.keys = KeyAdmin(self.store, ledger, self.auth, self.peers)  # admin API, GET /v1/key
        self.health = Health(settings.resilience)
        self.metrics = Metrics(
            settings.models,
            [route_name(route) for model in settings.models.values() for route in model.routes],
            settings.limits.metrics_max_models,
        )
        self.deadlines = Deadlines()  # the requests' timeouts, on one loop timer
        self.failover = Failover(settings, self.upstream, self.health, self.metrics, self.deadlines)
        self.draining = False
        self._drain: asyncio.Task[None] | None = None
        self._undo_sigterm: Callable[[], None] = _nothing

    def _price_lists(self) -> dict[str, PriceList]:
        """A price list per configured upstream that publishes one (OpenRouter's /models)."""
        every = self.settings.accounting.pricing.refresh
        return {
            name: PriceList(
                name,
                self.store,
                functools.partial(
                    self.upstream.fetch, provider, "models", MAX_LIST_BYTES, FETCH_TIMEOUT
                ),
                every,
            )
            for name, provider in self.providers.items()
            if provider.reports_cost and not provider.settings.missing
        }

    async def start(self) -> None:
        self._undo_sigterm = on_sigterm(asyncio.get_running_loop(), self.drain)
        await self.store.start()
        await self.ledger.start()
        await self.upstream.start()
        for price_list in self.price_lists.values():
            await price_list.start()
        self.observer.start()

    def drain(self) -> None:
        """Refuse new requests; end the in-flight ones after the shutdown grace (SIGTERM)."""
        if self.draining:
            return
        self.draining = True
        reason = ShuttingDown("The server is shutting down; send the request again.")
        grace = self.settings.resilience.shutdown_grace
        self._drain = asyncio.ensure_future(self.failover.drain(grace, reason))

    async def close(self) -> None:
        self._undo_sigterm()
        if self._drain is not None:
            self._drain.cancel()
        for price_list in self.price_lists.values():
            await price_list.close()
        await self.failover.close()
        await self.upstream.close()
        await self.ledger.close()
        await self.observer.close()
        await self.limiter.close()
        await self.store.close()

    async def complete(
        self,
        principal: Principal,
        body: dict[str, Any],
        *,
        request_id: str | None = None,
        trace: RequestTrace | None = None,
        api: UpstreamAPI = CHAT_COMPLETIONS,
        tags: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], RouteInfo]:
        """A whole chat.completion for a checked OpenAI-format body, `usage.cost` included
        (with `api`, that API's answer: relay_responses.RESPONSES gives a Response); `tags`
        (tags.py) go into its ledger row.

        `trace` records where the time went (timing.py); one is made if none is given. However
        the request fails or is abandoned, the failover settles its charge (an answer its
        upstream accepted is read on, and billed, after its client left: endings.py)."""
        trace = trace or RequestTrace(request_id or new_request_id())
        model, targets = self._route(body)
        trace.key_name, trace.model = principal.name, model.name
        received = _effort_received(body)
        effort = apply_reasoning_effort(body, model, self.settings.reasoning_policies)
        charge = await self.accounting.admit(principal, model, body, trace.request_id)
        charge.describe(trace, received, _short(effort), tags)
        self.observer.track(trace)
        won = await self.failover.complete(model, targets, body, charge, trace, api)
        charge.routed(won.target.route, stream=False)
        info = RouteInfo.of(won, effort, charge)  # its rate-limit headers, before the lease ends
        charge.complete(won.result)
        return won.result, info

    async def open_stream(
        self,
        principal: Principal,
        body: dict[str, Any],
        include_usage: bool,
        *,
        request_id: str | None = None,
        trace: RequestTrace | None = None,
        api: UpstreamAPI = CHAT_COMPLETIONS,
        tags: tuple[str, ...] = (),
    ) -> tuple[ChatStream, RouteInfo]:
        """A started ChatStream: its first token is already in, so nothing can fail silently.

        Its owner (endings.py) settles the charge when the stream ends, however it ends."""
        trace = trace or RequestTrace(request_id or new_request_id())
        trace.stream = True
        model, targets = self._route(body)
        trace.key_name, trace.model = principal.name, model.name
        received = _effort_received(body)
        effort = apply_reasoning_effort(body, model, self.settings.reasoning_policies)
        charge = await self.accounting.admit(principal, model, body, trace.request_id)
        charge.describe(trace, received, _short(effort), tags)
        self.observer.track(trace)
        won = await self.failover.open_stream(
            model, targets, body, include_usage, charge, trace, api
        )
        return won.result, RouteInfo.of(won, effort, charge)

    async def embed(
        self,
        principal: Principal,
        request: EmbeddingRequest,
        *,
        request_id: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], RouteInfo]:
        """A whole create-embedding response, `usage.cost` included, held and settled like a
        chat completion: the prompt's bound held, the counted tokens billed."""
        model, targets = self._route_embedding(request.model)
        plan = plan_embedding(model, request)
        trace = RequestTrace(request_id or new_request_id())  # for the access log
        trace.key_name, trace.model, trace.endpoint = principal.name, model.name, "/v1/embeddings"
        tokens = (request.prompt_estimate, request.prompt_bound, 0)
        charge = await self.accounting.admit(
            principal, model, request.body, trace.request_id, tokens=tokens
        )
        charge.describe(trace, None, None, tags)
        self.observer.track(trace)

        async def attempt(target: Target) -> dict[str, Any]:
            return await embed_on(self.failover, target, model, plan)

        try:
            won = await self.failover.call(model, targets, attempt, trace)
        except BaseException as exc:
            charge.fail(exc)
            raise
        charge.routed(won.target.route, stream=False)
        info = RouteInfo.of(won, None, charge)
        charge.complete(won.result)
        return won.result, info

    def keepalive(self, start_stream: StartStream | None, headers: Headers) -> KeepAlive:
        """Keep-alive comments for a stream being opened, should its first token be slow."""
        policy = self.settings.resilience
        return KeepAlive(
            start_stream,
            headers,
            policy.keepalive_after,
            policy.keepalive_interval,
            self._count_keepalive,
            self.deadlines,
        )

    def _count_keepalive(self) -> None:
        self.metrics.inc("callmissed_keepalive_streams_total")

    def _route(self, body: dict[str, Any]) -> tuple[ModelSettings, list[Target]]:
        if self.draining:
            raise ShuttingDown("The server is shutting down; send the request again.")
        model, targets = self.router.resolve(body["model"])
        if model.embedding is not None:
            raise InvalidRequest(
                f"The model {model.name!r} makes embeddings: use POST /v1/embeddings.",
                param="model",
            )
        return model, targets

    def _route_embedding(self, name: str) -> tuple[ModelSettings, list[Target]]:
        if self.draining:
            raise ShuttingDown("The server is shutting down; send the request again.")
        model, targets = self.router.resolve(name)
        # Any vendor/model id may be one of OpenRouter's embedding models: it decides.
        if model.embedding is None and name in self.settings.models:
            raise InvalidRequest(
                f"The model {name!r} makes no embeddings; GET /v1/models says which models do "
                '("capabilities": {"embedding": true}).',
                param="model",
            )
        return model, targets


def _nothing() -> None:
    pass


def _effort_received(body: dict[str, Any]) -> str | None:
    """reasoning_effort as the client sent it, for the ledger ("null" if sent as null)."""
    if "reasoning_effort" not in body:
        return None
    value = body["reasoning_effort"]
    return "null" if value is None else _short(str(value))


def _short(effort: str | None) -> str | None:
    # A passthrough model forwards any value; the ledger keeps a bounded one.
    return effort if effort is None else effort[:32]
