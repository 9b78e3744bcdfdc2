"""The layout STYLE.md promises, checked: pure providers and formats, modest module sizes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "callmissed"
PURE = ["providers", "formats"]
IO_MODULES = {
    "aiohttp",
    "httpx",
    "asyncpg",
    "redis",
    "sqlite3",
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
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    [p for folder in PURE for p in (PACKAGE / folder).glob("*.py")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_providers_and_formats_do_no_io(path):
    leaks = {
        name for name in _imports(path) if name.split(".")[0] in IO_MODULES or name in IO_MODULES
    }
    assert not leaks, f"{path.name} imports {leaks}"


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
