"""A served worker tunes its garbage collector once it has started (edge/collector.py): what
start-up made is frozen, and the young generation is collected every 10,000 allocations."""

from __future__ import annotations

import os
import subprocess
import sys

from callmissed.edge.collector import YOUNG_THRESHOLD
from tests.conftest import ROOT

# What granian does with the app `callmissed serve` hands it, in a process of its own (the
# collector's settings are the process's).
_WORKER = """
import asyncio, gc, uvloop
from callmissed.app import create_rsgi_app
loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
app = create_rsgi_app()
before = gc.get_threshold()[0], gc.get_freeze_count()
app.__rsgi_init__(loop)
after = gc.get_threshold()[0], gc.get_freeze_count()
app.__rsgi_del__(loop)
print(*before, *after)
"""


def test_a_served_worker_freezes_its_start_up_and_collects_the_young_less_often(tmp_path):
    env = {
        **os.environ,
        "CALLMISSED_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
        "CALLMISSED_ACCESS_LOG": "off",
    }
    result = subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    young_before, frozen_before, young_after, frozen_after = map(int, result.stdout.split())
    assert (young_before, frozen_before) == (700, 0)  # CPython's defaults until then
    assert young_after == YOUNG_THRESHOLD
    assert frozen_after > 10_000  # start-up's modules, catalog and settings
