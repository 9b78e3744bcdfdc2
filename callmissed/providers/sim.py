"""The simulator provider: `sim/...` models answered in-process by callmissed/simulator.py.

The request is built exactly as for an OpenAI-compatible server, so the simulated path runs
the same relay code as a real upstream; only the transport differs.
"""

from __future__ import annotations

from callmissed.providers.base import Provider

__all__ = ["Simulator"]


class Simulator(Provider):
    type = "sim"
    label = "CallMissed simulator"
