"""How deep JSON may nest: orjson parses 1,024 levels but encodes no more than 254.

The gateway re-encodes what it parsed (a request on its way upstream, an upstream chunk it had to
edit), so a document between the two depths would fail there, as an internal error. Callers ask
`too_deep` right after parsing instead and refuse it as the sender's fault.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "SHORTEST_TOO_DEEP", "too_deep"]

MAX_DEPTH = 254  # the deepest nesting orjson encodes (3.10 to 3.11 at least)

# Nesting past MAX_DEPTH takes an opening and a closing bracket per level: shorter documents are
# fine without a look. Longer ones are re-encoded to find out, the cheapest exact test there is:
# 2.3 us for a 4 KB chat request, where counting its brackets with bytes.count took 10 us.
SHORTEST_TOO_DEEP = 2 * (MAX_DEPTH + 1)


def too_deep(parsed: Any, size: int) -> bool:
    """Whether `parsed` (from a document of `size` bytes) nests deeper than orjson encodes."""
    if size < SHORTEST_TOO_DEEP:
        return False
    try:
        orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        return True
    return False
