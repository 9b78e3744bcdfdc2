"""The simulator provider: `sim/...` models answered in-process by callmissed/upstream/simulator.py.

The request is built exactly as for an OpenAI-compatible server, so the simulated path runs
the same relay code as a real upstream; only the transport differs. An embeddings request is
told its model's vector length, as a real server knows its own.
"""

from __future__ import annotations

from typing import Any

from callmissed.providers.base import Provider, UpstreamRequest
from callmissed.providers.environment import Environment
from callmissed.settings import ModelSettings, Route

__all__ = ["SIM_DIMENSIONS", "Simulator"]

SIM_DIMENSIONS = 256  # a simulated embedding model's vectors, unless the catalog says otherwise


class Simulator(Provider):
    type = "sim"
    label = "CallMissed simulator"
    environment = Environment("sim://local")  # always there: it needs no credentials
    transport = "simulator"

    def build_embedding_request(
        self, body: dict[str, Any], inputs: list[Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        if body.get("dimensions") is None:
            native = model.embedding.dimensions if model.embedding else None
            body = {**body, "dimensions": native or SIM_DIMENSIONS}
        return super().build_embedding_request(body, inputs, route, model)
