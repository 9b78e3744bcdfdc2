"""The README's quick start, run as written against a fresh `callmissed serve`: its first key, and
no upstream credentials at all."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Gateway, start_gateway, stop_gateway

README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:8080"
NO_CREDENTIALS = dict.fromkeys(
    ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID", "OPENROUTER_API_KEY", "SARVAM_API_KEY"), ""
)


def _quick_start(language: str) -> str:
    """The first `language` code block after the sentence about the first key."""
    after = README.split("Then, with that key", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", after, re.DOTALL)
    assert match, f"the README's quick start has no {language} block"
    return match.group(1)


@pytest.fixture(scope="module")
def fresh(upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(upstream, tmp_path_factory.mktemp("readme"), **NO_CREDENTIALS)
    yield running
    stop_gateway(running)


def _run(command: list[str], fresh: Gateway, cwd: Path) -> str:
    result = subprocess.run(
        command,
        env={**fresh.env, "CALLMISSED_KEY": fresh.key},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_curl_sample_streams_with_the_first_key(fresh, tmp_path):
    command = _quick_start("bash").replace(README_URL, fresh.url)
    output = _run(["bash", "-c", f"set -e; curl -sS --fail-with-body {command}"], fresh, tmp_path)
    assert output.rstrip().endswith("data: [DONE]")
    assert '"content":"Quicksort' in output


def test_the_python_sample_streams_with_the_first_key(fresh, tmp_path):
    code = _quick_start("python").replace(README_URL, fresh.url)
    code = code.replace(
        'api_key="cm_your_key"', 'api_key=__import__("os").environ["CALLMISSED_KEY"]'
    )
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    output = _run([sys.executable, str(script)], fresh, tmp_path)
    assert output.startswith("Quicksort picks a pivot")
