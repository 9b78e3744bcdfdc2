"""The only package that talks to upstreams: one transport per provider, one contract for all.

`contract.py` says what a transport does and raises; `pool.py` (`Upstream`) owns one per
provider and keeps them warm; `http1_transport.py` (over our own HTTP/1.1 client, `http1.py`),
`http2.py` (pyreqwest) and `simulator.py` (in-process) are the transports.
"""

from __future__ import annotations

from callmissed.upstream.contract import Response, Transport
from callmissed.upstream.pool import Upstream, UpstreamResponse

__all__ = ["Response", "Transport", "Upstream", "UpstreamResponse"]
