"""bodies.py: what the bodies being read may hold together, open and per key."""

from __future__ import annotations

import pytest

from callmissed.edge.bodies import KEY_BODIES_AT_ONCE, OPEN_BODIES_AT_ONCE, Bodies
from callmissed.errors import RateLimited, ServerBusy


def test_the_open_bodies_share_a_few_open_limits():
    bodies = Bodies(max_body_bytes=1000, max_open_body_bytes=10)
    bodies.open.take(OPEN_BODIES_AT_ONCE * 10)
    with pytest.raises(ServerBusy):
        bodies.open.take(1)
    bodies.open.give(10)
    bodies.open.take(10)


def test_each_key_has_its_own_share_of_full_limits():
    bodies = Bodies(max_body_bytes=1000, max_open_body_bytes=10)
    bodies.of_key(1).take(KEY_BODIES_AT_ONCE * 1000)
    with pytest.raises(RateLimited):
        bodies.of_key(1).take(1)
    bodies.of_key(2).take(1000)  # another key's budget is its own
    bodies.of_key(1).give(1000)
    bodies.of_key(1).take(1000)


def test_keys_holding_nothing_are_forgotten_once_many_were_seen():
    bodies = Bodies(max_body_bytes=1000, max_open_body_bytes=10)
    bodies.of_key(0).take(500)
    for key in range(1, 20_000):
        bodies.of_key(key)
    assert bodies.of_key(0).held == 500  # what is held is never forgotten
    assert len(bodies) <= 10_001
