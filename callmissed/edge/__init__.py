"""The HTTP server side: granian's RSGI interface (rsgi.py) and any ASGI server's (asgi.py) over
one server-agnostic App (web.py), with the limits a client is held to before and while it is
served: body memory (bodies.py), idle and unread connections (connections.py, sockdiag.py).

The arrows run one way: the gateway's use cases import nothing from here, and reach the client
only through callmissed/exchange.py, which the edge implements.
"""

__all__: list[str] = []
