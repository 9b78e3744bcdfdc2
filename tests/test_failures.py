"""callmissed/failures.py: docs/errors.md shows the table as it is, and every error finds its row.

Each row's behaviour, end to end, is tests/resilience/test_failure_table.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from callmissed import failures
from callmissed.errors import (
    UpstreamBodyTooLarge,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from callmissed.providers.cloudflare import Cloudflare
from callmissed.settings import ProviderSettings

ERRORS_DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_docs_errors_md_holds_the_table_as_generated():
    table = subprocess.run(
        [sys.executable, "-m", "callmissed.failures", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table == failures.markdown()
    assert f"\n\n{table}\n" in ERRORS_DOC.read_text(), (
        "docs/errors.md's failure table is stale: paste `python -m callmissed.failures --markdown`"
    )


def test_every_row_is_documented_for_the_operator():
    text = ERRORS_DOC.read_text()
    for column in ("another route", "same route again", "breaker", "named", "OpenAI client"):
        assert f"- **{column}**" in text


@pytest.mark.parametrize(
    ("status", "key"), [(418, "4xx"), (451, "4xx"), (501, "5xx"), (599, "5xx"), (503, "503")]
)
def test_a_status_without_a_row_of_its_own_takes_its_class_s(status, key):
    error = failures.from_status(status, "x")
    assert failures.rule(error).key == key
    assert error.upstream_status == status
    assert failures.outcome(error) == str(status)


@pytest.mark.parametrize(
    ("error", "key"),
    [
        (UpstreamUnreachable("x"), failures.UNREACHABLE),
        (UpstreamBroken("x"), failures.BROKEN),
        (UpstreamBodyTooLarge("x", limit=1), failures.TOO_LARGE),
        (UpstreamTimeout("x"), failures.FIRST_TOKEN_TIMEOUT),
        (UpstreamError("x"), failures.BROKEN),
        (UpstreamError("x", upstream_status=429), "429"),
    ],
)
def test_a_transport_s_error_finds_its_row_by_its_class(error, key):
    assert failures.rule(error).key == key


def test_each_row_raises_its_own_class():
    for row in failures.TABLE:
        if not row.key[0].isdigit():
            error = failures.failure(row.key, "x")
            assert type(error) is row.error
            assert failures.rule(error) is row


def test_workers_ai_account_codes_are_the_account_row():
    provider = Cloudflare(ProviderSettings(name="cf", type="cloudflare", base_url="http://x/v1"))
    body = b'{"success": false, "errors": [{"code": 5035, "message": "Workers Paid only"}]}'
    error = provider.parse_error(403, body, None)
    assert failures.rule(error).key == failures.ACCOUNT
    assert error.upstream_status == 403
    bad_input = b'{"success": false, "errors": [{"code": 5006, "message": "bad input"}]}'
    assert failures.rule(provider.parse_error(400, bad_input, None)).key == "400"
