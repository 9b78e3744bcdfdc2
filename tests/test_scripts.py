"""scripts/serve and scripts/test: what a checkout's `.venv` gets before they run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from callmissed.cli import FIRST_KEY_FILE
from tests.conftest import ROOT


def _checkout(tmp_path: Path, script: str, installed: str) -> Path:
    """A checkout holding `script`, a `.venv` set up for the `installed` pyproject.toml, and a
    scripts/setup and .venv tools that only say they ran."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / script, tmp_path / "scripts" / script)
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["new-dependency"]\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / ".venv" / "installed-pyproject.toml").write_text(installed)
    for path in ("scripts/setup", "scripts/check", ".venv/bin/callmissed", ".venv/bin/pytest"):
        (tmp_path / path).write_text(f"#!/usr/bin/env bash\necho {Path(path).name}\n")
        (tmp_path / path).chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("script", ["serve", "test"])
def test_a_changed_pyproject_sets_the_venv_up_again(tmp_path, script):
    checkout = _checkout(tmp_path, script, installed="[project]\ndependencies = []\n")
    ran = subprocess.run(
        [checkout / "scripts" / script], capture_output=True, text=True, timeout=30, check=True
    )
    assert ran.stdout.splitlines()[0] == "setup"


@pytest.mark.parametrize("script", ["serve", "test"])
def test_an_unchanged_pyproject_is_not_set_up_again(tmp_path, script):
    checkout = _checkout(tmp_path, script, installed="")
    shutil.copy(checkout / "pyproject.toml", checkout / ".venv" / "installed-pyproject.toml")
    ran = subprocess.run(
        [checkout / "scripts" / script], capture_output=True, text=True, timeout=30, check=True
    )
    assert "setup" not in ran.stdout.splitlines()


def test_what_serve_writes_into_a_checkout_is_never_committed():
    # `scripts/serve` runs in the checkout: its database, ledger and first key land there.
    written = [
        "callmissed.sqlite3",
        "callmissed.sqlite3-wal",
        "callmissed.sqlite3.ledger/a.journal",
    ]
    written.append(FIRST_KEY_FILE)
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", ROOT, "check-ignore", "--no-index", *written],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout.split() == written
