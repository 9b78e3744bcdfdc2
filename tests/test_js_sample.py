"""The Getting Started page's JavaScript sample, run with the `openai` package from npm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_service

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        require_service("Node.js", "node and npm are needed to run the JavaScript sample")
    assert node and npm
    if not (JS / "node_modules" / "openai").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            check=True,
            timeout=300,
            capture_output=True,
        )
    return node


@pytest.mark.parametrize("credits", [None, "5"], ids=["unlimited", "metered"])
def test_javascript_quickstart_streams(gateway, node, credits):
    key = gateway.key if credits is None else gateway.create_key("--credits", credits)
    result = subprocess.run(
        [node, "quickstart.mjs"],
        cwd=JS,
        env={**gateway.env, "CALLMISSED_KEY": key, "CALLMISSED_BASE_URL": gateway.base_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello world"
    assert gateway.upstream.last("@cf/openai/gpt-oss-120b").body["stream"] is True
