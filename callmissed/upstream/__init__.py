"""The only package that talks to upstreams: one pooled transport per provider.

`pool.py` owns the transports and sends built requests through them; `http1.py` is our own
HTTP/1.1 client; `simulator.py` answers `sim/...` models in-process.
"""

from __future__ import annotations

from callmissed.upstream.pool import Upstream, UpstreamResponse

__all__ = ["Upstream", "UpstreamResponse"]
