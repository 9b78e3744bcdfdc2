"""The HTTP server side: granian's RSGI interface (rsgi.py) and any ASGI server's (asgi.py) over
one server-agnostic App (web.py), with the limits a client is held to before and while it is
served: body memory (bodies.py), idle and unread connections (connections.py, sockdiag.py).
"""

__all__: list[str] = []
