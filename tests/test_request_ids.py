"""Request ids: unique, and in the order requests came (the ledger's primary key is one)."""

from __future__ import annotations

import time

from callmissed.exchange import new_request_id


def test_request_ids_are_unique_and_sort_by_time():
    earlier = [new_request_id() for _ in range(10_000)]
    time.sleep(0.002)
    later = new_request_id()
    assert len(set(earlier)) == len(earlier)
    assert all(len(rid) == len("req_") + 24 and rid.startswith("req_") for rid in earlier)
    assert later > max(earlier)  # a later millisecond sorts after every earlier id
