"""The layout STYLE.md promises, checked: pure providers and formats, upstream I/O only in
callmissed/upstream/, modest module sizes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "callmissed"
PURE = ["providers", "formats"]
UPSTREAM = PACKAGE / "upstream"
# What talks to upstreams: the HTTP clients and parsers, and the transports built on them
# (callmissed/upstream/contract.py). Only callmissed/upstream/ imports them, but for the tools
# named here, which run beside the gateway and never on a request's path.
UPSTREAM_IO = {
    "pyreqwest",  # http2.py
    "httptools",  # http1.py's response parser
    "aiohttp",
    "httpx",
    "h2",
    "callmissed.upstream.http1",
    "callmissed.upstream.http1_transport",
    "callmissed.upstream.http2",
    "callmissed.upstream.simulator",
}
UPSTREAM_IO_OUTSIDE = {
    "bench.py": {"pyreqwest"},  # `callmissed bench`: its client of the gateway under test
    "checklist.py": {"aiohttp"},  # `callmissed doctor --url`: the checklist against a gateway
    "doctor.py": {"aiohttp"},  # `callmissed doctor`: times each upstream's handshakes
}
# Sockets opened through asyncio's streams (the other way to reach a server), and who may.
SOCKET_CALLS = {"open_connection", "create_connection", "open_unix_connection", "sock_connect"}
SOCKETS_OUTSIDE = {
    "checklist.py",  # ALPN and h2c probes of the gateway
    "doctor.py",  # TCP and TLS handshake timings
    "peers.py",  # the gateway's own workers, over unix sockets
}
# Everything that does I/O, none of which a pure module may import.
IO_MODULES = UPSTREAM_IO | {
    "asyncpg",
    "redis",
    "sqlite3",
    "socket",
    "ssl",
    "http.client",
    "asyncio",
    "callmissed.store",
    "callmissed.upstream",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)  # and each name, which may be a module (`from a import b`)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    "path",
    [p for folder in PURE for p in (PACKAGE / folder).glob("*.py")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_providers_and_formats_do_no_io(path):
    leaks = {name for name in _imports(path) if _within(name, IO_MODULES)}
    assert not leaks, f"{path.name} imports {leaks}"


def _within(name: str, modules: set[str]) -> bool:
    """Whether `name` is one of `modules` or inside one."""
    return any(name == module or name.startswith(f"{module}.") for module in modules)


def _socket_calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in SOCKET_CALLS
    }


OUTSIDE_UPSTREAM = [p for p in sorted(PACKAGE.rglob("*.py")) if UPSTREAM not in p.parents]


@pytest.mark.parametrize("path", OUTSIDE_UPSTREAM, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_upstream_package_talks_to_upstreams(path):
    allowed = UPSTREAM_IO_OUTSIDE.get(str(path.relative_to(PACKAGE)), set())
    leaks = {
        name for name in _imports(path) if _within(name, UPSTREAM_IO) and not _within(name, allowed)
    }
    assert not leaks, f"{path.name} imports {leaks}: upstream I/O belongs in callmissed/upstream/"
    if str(path.relative_to(PACKAGE)) not in SOCKETS_OUTSIDE:
        assert not _socket_calls(path), f"{path.name} opens sockets of its own"


def test_the_upstream_io_list_names_what_upstream_uses():
    """The list above is the transports' real dependencies, not a wish: each is imported."""
    used = set().union(*(_imports(path) for path in UPSTREAM.glob("*.py")))
    used |= {name.split(".")[0] for name in used}
    assert {"pyreqwest", "httptools"} <= used
    transports = {name for name in UPSTREAM_IO if name.startswith("callmissed.upstream.")}
    assert transports <= used
    assert (UPSTREAM / "http1.py").exists() and _socket_calls(UPSTREAM / "http1.py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_grows_past_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600


def test_every_module_says_what_it_owns():
    undocumented = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py" and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not undocumented


# The server side and what plugs handlers into it; everything else is use cases and below.
EDGE_SIDE = ("edge/", "api/", "console/", "app.py", "cli.py")


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not str(p.relative_to(PACKAGE)).startswith(EDGE_SIDE)
    ],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_use_cases_do_not_depend_on_their_server(path):
    """The arrows run from the edge to the gateway, never back (docs/architecture.md)."""
    edge = {name for name in _imports(path) if name.startswith("callmissed.edge")}
    assert not edge, f"{path.name} imports {edge}"


def test_every_document_the_code_cites_is_in_the_repository():
    """A docstring or comment that names a .md file names one a reader of the repository has."""
    root = PACKAGE.parent
    cited = {
        (path.relative_to(PACKAGE), name)
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"[\w./-]+\.md\b", path.read_text())
    }
    missing = [
        f"{path}: {name}"
        for path, name in sorted(cited)
        if not any((base / name).is_file() for base in (root, root / "docs"))
        or name.startswith("..")
    ]
    assert not missing
