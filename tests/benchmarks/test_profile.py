"""Where the gateway's time goes (benchmarks/profile.py), from made-up py-spy stacks: each
sample counts for the deepest callmissed module on its stack."""

from __future__ import annotations

import pytest

from benchmarks.profile import by_module, read


def test_each_sample_counts_for_the_deepest_callmissed_module(tmp_path):
    collapsed = tmp_path / "gateway.collapsed"
    serve, worker = 'process 7:"callmissed serve"', 'process 8:"callmissed serve"'
    collapsed.write_text(  # py-spy --subprocesses --format raw: the processes, then the frames
        f"{serve};{worker};main (callmissed/cli.py:44);"
        "run (callmissed/relay.py:10);loads (orjson/__init__.py:1) 6\n"
        f"{serve};{worker};run (callmissed/relay.py:10);frame (callmissed/sse.py:20) 3\n"
        f"{serve};{worker} 2\n"
        f"{serve};{worker};run_forever (asyncio/base_events.py:1) 1\n"
    )
    shares = by_module(read(collapsed))
    assert [owner for owner, _ in shares] == [
        "relay.py",  # orjson's time, spent for the relay; cli.py is never the owner
        "sse.py",
        "(native: granian's Rust HTTP server, no Python frame)",
        "(Python outside callmissed: granian glue, asyncio loop)",
    ]
    assert [share for _, share in shares] == pytest.approx([0.5, 0.25, 2 / 12, 1 / 12])
