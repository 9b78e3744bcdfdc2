"""What the benchmark ran on, and what its processes cost: read from /proc, no dependencies."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuClock",
    "Placement",
    "ProcessTree",
    "cpu_list",
    "describe_machine",
    "on_cpus",
    "package_versions",
]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(root: Path) -> str:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "callmissed")
    return f"{revision}{' + uncommitted changes in callmissed/' if dirty else ''}"


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


@dataclass(frozen=True)
class ProcessTree:
    """A process and all its descendants (granian runs its workers as child processes), and
    those of any `others` measured with it."""

    root: int
    others: tuple[int, ...] = ()

    def pids(self) -> list[int]:
        children = _children()
        found, todo = [], [self.root, *self.others]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / _TICK

    def main_thread_cpu_seconds(self) -> float:
        """CPU of each process's main thread only: where a granian worker runs its Python event
        loop (its other threads are granian's Rust runtime)."""
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / _TICK

    def rss_mib(self) -> dict[int, float]:
        sizes = {}
        for pid in self.pids():
            try:
                resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except OSError:
                continue
            sizes[pid] = round(resident * _PAGE / 2**20, 1)
        return sizes


class CpuClock:
    """Busy CPU time of the whole machine, from /proc/stat."""

    @staticmethod
    def busy_seconds() -> float:
        fields = [
            int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / _TICK


@dataclass(frozen=True)
class Placement:
    """Which CPUs the two sides of a measurement run on: the load side (the runner, the load
    generator, the fake upstreams, the profiler) and the server under test (every process of
    it). Both empty: unpinned, where the scheduler puts them."""

    load: tuple[int, ...] = ()
    server: tuple[int, ...] = ()

    @classmethod
    def split(cls, cpus: Iterable[int]) -> Placement:
        """The first half of `cpus` for the load side, the rest for the server."""
        ordered = sorted(cpus)
        if len(ordered) < 2:
            raise ValueError(f"pinning needs two CPUs; this process may use {ordered}")
        half = len(ordered) // 2
        return cls(tuple(ordered[:half]), tuple(ordered[half:]))

    def describe(self, workers: int) -> str:
        if not self.server:
            return (
                "load generator, upstream(s) and server share the machine's cores, unpinned;"
                " each table's CPU column says how they were shared"
            )
        return (
            f"pinned (--pin): load generator, fake upstream(s) and runner on CPU "
            f"{cpu_list(self.load)}; the server under test, every process of it ({workers} "
            f"worker(s)), on CPU {cpu_list(self.server)}, the same for every system; direct's "
            f"floor is CPU {cpu_list(self.load)}'s alone"
        )


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def on_cpus(command: list[str], cpus: tuple[int, ...]) -> list[str]:
    """`command` confined to `cpus` (unchanged if empty). taskset sets the mask and then execs
    the command, so the pid is the command's and every thread and child process it starts
    later inherits the mask: granian's workers and their Rust threads included."""
    return ["taskset", "--cpu-list", cpu_list(cpus), *command] if cpus else command
