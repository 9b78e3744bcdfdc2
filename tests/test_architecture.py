"""The layout STYLE.md promises, checked: pure providers and formats, upstream I/O only in
callmissed/upstream/, modest module sizes; and docs/architecture.md true to the package."""

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


# docs/architecture.md: every module it names exists where it says, and its drawing names every
# module of the package, so that a newcomer's map is the package as it is.
ROOT = PACKAGE.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
_ENTRY = re.compile(r"^  (\S+)")
_FILE = re.compile(r"(?<![\w./-])((?:\w+/)*\w+\.(?:py|toml))\b")
_FOLDER = re.compile(r"(?<![\w./-])((?:\w+/)+)(?![\w.])")
_DOC = re.compile(r"[\w./-]+\.md\b")
_DOTTED = re.compile(r"\bcallmissed(?:\.\w+)+")
_CODE = re.compile(r"`([^`\n]+)`")
_NOT_MODULES = {"__pycache__", "__init__.py", "py.typed"}


def _drawing_and_prose() -> tuple[str, str]:
    before, after = ARCHITECTURE.read_text().split("## The package", 1)
    _, drawing, rest = after.split("```", 2)
    return drawing, before + rest


def _drawn() -> list[tuple[Path, str]]:
    """Each name the drawing shows, with the folder it stands in (an entry's line and the lines
    under it speak of that entry's folder; a heading or a top-level file's, of the package)."""
    drawing, _ = _drawing_and_prose()
    folder, names = PACKAGE, []
    for line in drawing.splitlines():
        entry = _ENTRY.match(line)
        if entry or not line.startswith(" "):
            name = entry.group(1) if entry else ""
            folder = PACKAGE / name if name.endswith("/") else PACKAGE
            if entry:
                names.append((PACKAGE, name))
                line = line[entry.end() :]
        names += [(folder, found) for found in _FILE.findall(line) + _FOLDER.findall(line)]
    return names


def _where(folder: Path, name: str) -> list[Path]:
    """What `name`, drawn in `folder`, is: the path itself, else (inside a folder of the package)
    the files of that name below it."""
    exact = folder / name.rstrip("/")
    if exact.exists():
        return [exact]
    if folder == PACKAGE:
        return []
    return [p for p in folder.rglob(name.rstrip("/")) if p.is_dir() == name.endswith("/")]


def test_every_module_the_architecture_drawing_names_exists_where_it_is_drawn():
    missing = [f"{folder.name}/: {name}" for folder, name in _drawn() if not _where(folder, name)]
    assert not missing


def test_the_architecture_drawing_names_every_module_and_folder():
    drawn = {path for folder, name in _drawn() for path in _where(folder, name)}
    modules = [path for path in PACKAGE.iterdir() if path.name not in _NOT_MODULES]
    for folder in [path for path in modules if path.is_dir()]:
        modules += [
            path
            for path in folder.rglob("*")
            if (path.suffix == ".py" or path.is_dir()) and path.name not in _NOT_MODULES
        ]
    undrawn = sorted(str(path.relative_to(PACKAGE)) for path in modules if path not in drawn)
    assert not undrawn


def test_every_path_and_module_the_architecture_prose_names_exists():
    _, prose = _drawing_and_prose()
    codes = _CODE.findall(prose)
    missing = [name for name in _FILE.findall(prose) if not _exists(name)]
    missing += [name for name in codes if _FOLDER.fullmatch(name) and not _exists(name)]
    missing += [
        name
        for name in _DOTTED.findall(prose)
        if not (ROOT / f"{name.replace('.', '/')}.py").is_file()
        and not (ROOT / name.replace(".", "/")).is_dir()
    ]
    missing += [
        name
        for name in _DOC.findall(ARCHITECTURE.read_text())
        if not ((ROOT / name).is_file() or (ROOT / "docs" / name).is_file())
    ]
    assert not missing


def _exists(name: str) -> bool:
    """A path from the repository or the package, or a file's or folder's name in the package."""
    name = name.rstrip("/")
    if "/" in name:
        return (ROOT / name).exists() or (PACKAGE / name).exists()
    return any(PACKAGE.rglob(name))


def test_every_class_member_and_module_name_the_architecture_doc_names_exists():
    """`Charge.settle`, `failures.rule`, `GIVE_BACK`: each is defined where the doc says."""
    members, tops = _definitions()
    wrong = []
    for code in _CODE.findall(ARCHITECTURE.read_text()):
        dotted = re.fullmatch(r"([A-Za-z_]\w*)\.(\w+)(?:\(\))?", code)
        if _FILE.fullmatch(code) or _DOC.fullmatch(code):
            continue  # a file: the tests above
        if dotted is not None:
            owner, name = dotted.groups()
            known = members.get(owner) or tops.get(owner)
            if known is not None and name not in known:
                wrong.append(code)
        elif re.fullmatch(r"[A-Z][A-Za-z0-9_]*", code) and code not in tops["*"]:
            wrong.append(code)
    assert not wrong


def _definitions() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each class's members (methods, class attributes, what its methods set on self), by class
    name; each module's top-level names, by module name, and every one of them under "*"."""
    members: dict[str, set[str]] = {}
    tops: dict[str, set[str]] = {"*": set()}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = tops.setdefault(path.stem, set())
        for node in tree.body:
            top.update(_names(node))
            if isinstance(node, ast.ClassDef):
                found = members.setdefault(node.name, set())
                found.update(name for child in node.body for name in _names(child))
                found.update(
                    target.attr
                    for child in ast.walk(node)
                    if isinstance(child, (ast.Assign, ast.AnnAssign))
                    for target in (
                        child.targets if isinstance(child, ast.Assign) else [child.target]
                    )
                    if isinstance(target, ast.Attribute)
                )
        tops["*"] |= top
    return members, tops


def _names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else []
    targets += [node.target] if isinstance(node, ast.AnnAssign) else []
    return {target.id for target in targets if isinstance(target, ast.Name)}


# The two arrows that run up the drawing on purpose: a handler uses the edge's Request and
# Response, and upstream/ sends the UpstreamRequest a provider built.
_UPWARD = {("API", "EDGE"), ("UPSTREAM", "PROVIDERS")}


def _layers() -> dict[str, tuple[int, str]]:
    """Each top-level module or folder the drawing puts on the request path: its layer's place
    from the top, and the layer's first word. Those beside the path are not in it."""
    drawing, _ = _drawing_and_prose()
    layers: dict[str, tuple[int, str]] = {}
    heading = (0, "")
    for line in drawing.splitlines():
        if line and not line.startswith(" "):
            heading = (heading[0] + 1, re.split(r"\W", line, maxsplit=1)[0])
            if heading[1] == "BESIDE":
                break
        elif entry := _ENTRY.match(line):
            layers[entry.group(1).removesuffix("/").removesuffix(".py")] = heading
    return layers


def test_imports_run_down_the_architecture_drawing():
    layers = _layers()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layers.get(path.relative_to(PACKAGE).parts[0].removesuffix(".py"))
        for name in _imports(path) if own else ():
            parts = name.split(".")
            other = layers.get(parts[1]) if parts[0] == "callmissed" and len(parts) > 1 else None
            if own and other and other[0] < own[0] and (own[1], other[1]) not in _UPWARD:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not upward
