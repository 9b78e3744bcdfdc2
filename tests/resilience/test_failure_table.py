"""The failure table (callmissed/failures.py), row by row, through a running gateway.

Each row gets a fault upstream that fails that way (tests/fakes/faults.py) and is checked end to
end with the official SDKs: on the first of two routes, whether the second one answers (fallback)
and the first route's breaker afterwards (one failure opens it here); on a model's only route,
whether it is tried again (retry) and the error each dialect's client gets, status and type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from callmissed import failures
from callmissed.errors import UpstreamError, to_anthropic, to_openai
from tests.conftest import stop_gateway
from tests.fakes.faults import FaultUpstream
from tests.resilience.conftest import CLIENT_TIMEOUT, launch, sdk

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@dataclass(frozen=True)
class Case:
    provider: str  # of the faulty route (tests/resilience/conftest.py's PROVIDERS)
    fault: str  # the fault upstream's behaviour
    status: int | None = None  # the upstream status the fault answers with
    after_first_token: bool = False  # the failure comes once the stream has begun


def _status(status: int, provider: str = "fa", fault: str = "") -> Case:
    return Case(provider, fault or f"error-{status}", status)


CASES: dict[str, Case] = {
    **{row.key: _status(int(row.key)) for row in failures.TABLE if row.key.isdigit()},
    "4xx": _status(418),
    "5xx": _status(501),
    failures.UNREACHABLE: Case("dead", "refuse"),
    failures.FIRST_TOKEN_TIMEOUT: Case("fa", "stall-headers"),
    failures.BROKEN: Case("fa", "reset-after-role"),
    failures.MALFORMED: Case("fa", "bad-json-first"),
    failures.TOO_LARGE: Case("fa", "huge-event"),
    failures.IDLE_TIMEOUT: Case("fa", "stall-mid", after_first_token=True),
    failures.TOTAL_TIMEOUT: Case("fa", "endless", after_first_token=True),
    failures.ACCOUNT: _status(403, "cf", "error-403-5035"),  # Workers AI: Workers Paid only
}
ROWS = {row.key: row for row in failures.TABLE}


def _route(key: str, prefix: str) -> tuple[str, str]:
    """(provider, upstream model) of a row's faulty route for one test's models."""
    case = CASES[key]
    return case.provider, f"{prefix}/{key}/{case.fault}"


def _models(prefix: str, chained: bool) -> str:
    lines = []
    for key in CASES:
        provider, first = _route(key, prefix)
        second = f', "fb:{first}/ok"' if chained else ""
        lines.append(f'[models."{prefix}/{key}"]\nroutes = ["{provider}:{first}"{second}]')
        if key == failures.TOTAL_TIMEOUT:
            lines.append("timeouts = { total = 1 }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def chained(upstream, faults, tmp_path_factory):
    """Every row on the first of two routes; one failure opens a breaker for a minute."""
    running = launch(
        upstream,
        faults,
        tmp_path_factory.mktemp("table-chained"),
        _models("chain", chained=True),
        CALLMISSED_BREAKER_FAILURES="1",
        CALLMISSED_BREAKER_OPEN="60",
        CALLMISSED_SSE_EVENT_BYTES="65536",
    )
    yield running
    stop_gateway(running)


@pytest.fixture(scope="module")
def alone(upstream, faults, tmp_path_factory):
    """Every row on a model's only route, once per dialect; three attempts per request."""
    running = launch(
        upstream,
        faults,
        tmp_path_factory.mktemp("table-alone"),
        _models("solo", chained=False) + _models("anth", chained=False),
        CALLMISSED_MAX_ATTEMPTS="3",
        CALLMISSED_SSE_EVENT_BYTES="65536",
    )
    yield running
    stop_gateway(running)


def _expected(key: str) -> UpstreamError:
    """The error a row raises, as the faults upstream provokes it."""
    status = CASES[key].status
    if key.isdigit() or key in ("4xx", "5xx"):
        assert status is not None
        return failures.from_status(status, "x")
    return failures.failure(key, "x")


def _calls(faults: FaultUpstream, model: str) -> int:
    return len(faults.for_model(model))


def _breaker(gateway: Any, model: str, route: str) -> str:
    listing = httpx.get(
        f"{gateway.base_url}/models", headers={"authorization": f"Bearer {gateway.key}"}
    ).json()
    entry = next(item for item in listing["data"] if item["id"] == model)
    return str(next(health["state"] for health in entry["health"] if health["route"] == route))


def _stream(client: openai.OpenAI, model: str) -> tuple[str, dict[str, str], list[Any]]:
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as raw:
        chunks = []
        for chunk in raw.parse():
            chunks.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, dict(raw.headers), chunks


def _in_band(client: openai.OpenAI, model: str) -> openai.APIError:
    """The error a stream that began ends with; it must carry some content first."""
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
            seen.append(chunk)
    assert not isinstance(caught.value, openai.APIStatusError)  # after the 200
    assert any(c.choices and c.choices[0].delta.content for c in seen)
    return caught.value


def test_every_row_has_a_case():
    assert set(CASES) == set(ROWS)


def test_only_a_row_that_falls_back_retries():
    assert all(row.fallback for row in failures.TABLE if row.retry)


@pytest.mark.parametrize("key", CASES)
def test_fallback_and_breaker(chained, faults, key):
    row, case = ROWS[key], CASES[key]
    provider, first = _route(key, "chain")
    model, second = f"chain/{key}", f"{first}/ok"
    with sdk(chained) as client:
        if case.after_first_token:
            _in_band(client, model)
        elif row.fallback:
            text, headers, _ = _stream(client, model)
            assert text == f"Hello from {second}"
            assert headers["x-callmissed-attempts"] == "2"
        else:
            with pytest.raises(openai.APIStatusError) as caught:
                _stream(client, model)
            assert caught.value.status_code == to_openai(_expected(key))[0]
    assert _calls(faults, second) == (1 if row.fallback and not case.after_first_token else 0)
    if provider != "dead":
        assert _calls(faults, first) == 1
    wanted = "open" if row.breaker is failures.Breaker.FAILURE else "closed"
    deadline = time.monotonic() + 2  # a stream's end is told to health as it closes
    while (state := _breaker(chained, model, f"{provider}:{first}")) != wanted:
        assert time.monotonic() < deadline, f"{key}: breaker {state}, not {wanted}"
        time.sleep(0.02)


@pytest.mark.parametrize("key", CASES)
def test_retry_and_what_an_openai_client_gets(alone, faults, key):
    row, case = ROWS[key], CASES[key]
    provider, first = _route(key, "solo")
    status, body = to_openai(_expected(key))
    with sdk(alone) as client:
        if case.after_first_token:
            error: openai.APIError = _in_band(client, f"solo/{key}")
        else:
            with pytest.raises(openai.APIStatusError) as caught:
                _stream(client, f"solo/{key}")
            assert caught.value.status_code == status
            error = caught.value
    assert isinstance(error.body, dict)
    assert error.body["type"] == body["error"]["type"]
    assert error.body["code"] == body["error"]["code"]
    attempts = 3 if row.retry else 1
    assert ("after 3 attempts" in error.message) is row.retry
    if provider != "dead":
        assert _calls(faults, first) == attempts


@pytest.mark.parametrize("key", [key for key in CASES if not CASES[key].after_first_token])
def test_what_an_anthropic_client_gets(alone, key):
    status, body = to_anthropic(_expected(key))
    with (
        anthropic.Anthropic(
            base_url=alone.url, api_key=alone.key, max_retries=0, timeout=CLIENT_TIMEOUT
        ) as claude,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        claude.messages.create(
            model=f"anth/{key}",
            max_tokens=64,
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == body["error"]["type"]
