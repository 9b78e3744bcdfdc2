"""Accounting's place in the package, read from the imports and calls: the request path depends
on accounting, never the reverse, and keys and credit change through accounting/keys.py alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "callmissed"
ACCOUNTING = PACKAGE / "accounting"
# What accounting may not import: the request path it serves and the edges that call it.
CALLERS = (
    "callmissed.api",
    "callmissed.app",
    "callmissed.cli",
    "callmissed.console",
    "callmissed.edge",
    "callmissed.endings",
    "callmissed.failover",
    "callmissed.gateway",
    "callmissed.relay",
    "callmissed.relay_responses",
    "callmissed.upstream",
)
# The store's writes to keys and their credit.
KEY_WRITES = {"create_key", "revoke_key", "topup", "set_policy", "set_limit_reset"}
# Who may call them: the store itself, accounting, and auth.py's create_key (the key's secret).
WRITERS = (PACKAGE / "store", ACCOUNTING, PACKAGE / "auth.py")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    "path", sorted(ACCOUNTING.rglob("*.py")), ids=lambda p: str(p.relative_to(ACCOUNTING))
)
def test_accounting_imports_none_of_its_callers(path):
    wrong = {
        name
        for name in _imported(_tree(path))
        if any(name == caller or name.startswith(f"{caller}.") for caller in CALLERS)
    }
    assert not wrong, f"accounting/{path.relative_to(ACCOUNTING)} imports {sorted(wrong)}"


def test_keys_and_credit_change_only_through_accounting():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path == writer or writer in path.parents for writer in WRITERS):
            continue
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in KEY_WRITES
            ):
                calls.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.attr}")
    assert not calls, f"store writes past accounting/keys.py: {calls}"


def test_no_module_patches_a_part_of_another_object():
    """Dependencies are passed in when a part is built: nothing sets `a.b.c = …` on an object
    it does not own (app.py once set `gateway.credits.reclaim` after building the gateway)."""
    patched = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.stmt) and any(map(_reaches_into_another, _assigned(node)))
    ]
    assert not patched, f"set after construction: {patched}"


def _assigned(node: ast.stmt) -> list[ast.expr]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets.append(node.target)
    for target in node.targets if isinstance(node, ast.Assign) else []:
        targets.extend(target.elts if isinstance(target, ast.Tuple) else [target])
    return targets


def _reaches_into_another(target: ast.expr) -> bool:
    """`a.b.c` for any `a` but `self`: an attribute of a part of another object."""
    if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)):
        return False
    root: ast.expr = target.value
    while isinstance(root, ast.Attribute):
        root = root.value
    return not (isinstance(root, ast.Name) and root.id == "self")
