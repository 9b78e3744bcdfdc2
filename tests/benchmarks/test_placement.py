"""`--pin` (benchmarks/machine.py): which CPUs each side gets, and a server started on its CPUs
stays there with every thread and child process it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.machine import Placement, on_cpus


def test_the_load_side_gets_the_first_half_and_the_server_the_rest():
    assert Placement.split({1, 0}) == Placement(load=(0,), server=(1,))
    assert Placement.split(range(5)) == Placement(load=(0, 1), server=(2, 3, 4))
    with pytest.raises(ValueError, match="two CPUs"):
        Placement.split({3})


def test_the_report_says_what_was_pinned_where():
    assert "unpinned" in Placement().describe(2)
    pinned = Placement((0,), (1,)).describe(1)
    assert "load generator, fake upstream(s) and runner on CPU 0" in pinned
    assert "every process of it (1 worker(s)), on CPU 1" in pinned


def test_a_command_on_cpus_keeps_them_in_its_threads_and_children():
    cpu = min(os.sched_getaffinity(0))
    script = (
        "import os, subprocess, sys, threading\n"
        "seen = []\n"
        "thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))\n"
        "thread.start(); thread.join()\n"
        "child = [sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))']\n"
        "print(sorted(seen[0]), subprocess.run(child, capture_output=True, text=True).stdout)\n"
    )
    command = on_cpus([sys.executable, "-c", script], (cpu,))
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split() == [f"[{cpu}]", f"[{cpu}]"]
    assert on_cpus(["true"], ()) == ["true"]  # unpinned: as given
