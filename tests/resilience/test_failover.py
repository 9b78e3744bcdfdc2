"""Every injected fault, streamed and not, as the official openai SDK sees it through the gateway.

Each fault sits on the first route of a two-route chain whose second route answers. Before the first
token a retryable fault falls back (the answer comes from the second route); after it, the stream
ends with an error the SDK raises and nothing is retried; a client error goes straight back. The
SDK's own timeout bounds every call, so a gateway that hangs past its limits fails the test.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import stop_gateway
from tests.fakes.faults import FaultUpstream
from tests.resilience.conftest import launch, sdk

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]

FALLBACK, FIRST, RAISES = "fallback", "first", "raises"
# fault -> what the client sees (stream, non-stream): the second route's answer, the first
# route's own, an error raised mid-stream, or an HTTP status before anything was sent.
# A non-streamed answer is one "first token", so only the total timeout (2 s) bounds it.
CASES: dict[str, tuple[str | int, str | int]] = {
    "refuse": (FALLBACK, FALLBACK),
    "error-500": (FALLBACK, FALLBACK),
    "error-429-ra1": (FALLBACK, FALLBACK),
    "cf/error-429-3040": (FALLBACK, FALLBACK),  # Workers AI: capacity
    "cf/error-503-7009": (FALLBACK, FALLBACK),  # Workers AI: upstream unavailable
    "cf/error-403-5035": (FALLBACK, FALLBACK),  # Workers AI: a Workers Paid model
    "cf/error-400-5006": (400, 400),  # Workers AI: bad input is the client's
    "error-400": (400, 400),
    "error-422": (422, 422),
    "reset-before": (FALLBACK, FALLBACK),
    "reset-after-role": (FALLBACK, FALLBACK),
    "reset-after-token": (RAISES, FALLBACK),
    "stall-headers": (FALLBACK, 504),
    "stall-mid": (RAISES, 504),
    "bad-sse": (FALLBACK, FALLBACK),
    "bad-json-first": (FALLBACK, FALLBACK),
    "bad-json-after": (RAISES, FALLBACK),
    "truncated": (FALLBACK, FALLBACK),
    "truncated-after": (RAISES, FALLBACK),
    "slow-first": (FALLBACK, FIRST),
}


MODES = ("stream", "non-stream")


def _first_route(fault: str, mode: str) -> tuple[str, str]:
    """(provider, upstream model) of the faulty first route; each mode has its own routes."""
    if fault == "refuse":
        return "dead", f"{mode}/refuse"
    if fault.startswith("cf/"):
        return "cf", f"{mode}/" + fault.removeprefix("cf/")
    return "fa", f"{mode}/{fault}"


def _models() -> str:
    lines = []
    for fault in CASES:
        for mode in MODES:
            provider, first = _first_route(fault, mode)
            routes = f'["{provider}:{first}", "fb:{first}/ok"]'
            lines.append(f'[models."chain/{mode}/{fault}"]\nroutes = {routes}')
    lines += [
        '[models."solo/error-500"]\nroutes = ["fa:solo/error-500"]',
        '[models."solo/error-429"]\nroutes = ["fa:solo/error-429-ra1"]',
        '[models."solo/error-503-ra30"]\nroutes = ["fa:solo/error-503-ra30"]',
        '[models."solo/stall-headers"]\nroutes = ["fa:solo/stall-headers"]',
        '[models."solo/refuse"]\nroutes = ["dead:solo/refuse"]',
        '[models."solo/stall-mid"]\nroutes = ["fa:solo/stall-mid"]',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def chain(upstream, faults, tmp_path_factory):
    running = launch(upstream, faults, tmp_path_factory.mktemp("chain"), _models())
    yield running
    stop_gateway(running)


@pytest.fixture
def client(chain):
    with sdk(chain) as made:
        yield made


def _calls(faults: FaultUpstream, model: str, stream: bool) -> int:
    return sum(1 for call in faults.for_model(model) if call.stream == stream)


def _stream_text(client: openai.OpenAI, model: str) -> tuple[str, dict[str, str]]:
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return text, dict(raw.headers)


def _text(client: openai.OpenAI, model: str) -> tuple[str, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("fault", CASES)
def test_fault_on_the_first_route(client, faults, fault, stream):
    mode = MODES[0 if stream else 1]
    expected = CASES[fault][0 if stream else 1]
    _, first = _first_route(fault, mode)
    second = f"{first}/ok"
    model = f"chain/{mode}/{fault}"
    if expected in (FALLBACK, FIRST):
        text, headers = (_stream_text if stream else _text)(client, model)
        winner = second if expected == FALLBACK else first
        assert text == f"Hello from {winner}"
        assert headers["x-callmissed-upstream-model"] == winner
        assert _calls(faults, second, stream) == (1 if expected == FALLBACK else 0)
        if expected == FALLBACK:
            assert headers["x-callmissed-route"] == "fb"
            assert headers["x-callmissed-attempts"] == "2"
    elif expected == RAISES:
        seen = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(
                model=model, messages=MESSAGES, stream=True
            ):
                seen.append(chunk)
        assert not isinstance(caught.value, openai.APIStatusError)  # in-band, after the 200
        assert any(c.choices and c.choices[0].delta.content for c in seen)
        assert _calls(faults, second, stream) == 0  # no silent switch after the first token
    else:
        with pytest.raises(openai.APIStatusError) as status_error:
            client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
        assert status_error.value.status_code == expected
        assert _calls(faults, second, stream) == 0
    if fault == "reset-before":  # on a reused keep-alive connection, it is retried once
        assert _calls(faults, first, stream) in (1, 2)
    elif fault != "refuse":
        assert _calls(faults, first, stream) == 1


def test_a_transient_failure_is_retried_on_the_only_route_within_the_budget(client, faults):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="solo/error-500", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "after 3 attempts" in caught.value.message
    assert len(faults.for_model("solo/error-500")) == 3  # CALLMISSED_MAX_ATTEMPTS


def test_a_rate_limit_is_not_retried_and_its_retry_after_reaches_the_client(client, faults):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="solo/error-429", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "1"
    assert len(faults.for_model("solo/error-429-ra1")) == 1


def test_a_long_retry_after_is_honoured_for_later_requests_too(client, faults):
    with pytest.raises(openai.InternalServerError) as first:
        client.chat.completions.create(model="solo/error-503-ra30", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError) as second:
        client.chat.completions.create(model="solo/error-503-ra30", messages=MESSAGES)
    assert first.value.status_code == second.value.status_code == 503
    # The second request did not reach the upstream: it had asked for 30 s of quiet.
    assert len(faults.for_model("solo/error-503-ra30")) == 1
    assert "tried again in" in second.value.message
    assert second.value.code == "routes_resting"  # not the first answer's text, as if repeated
    assert int(second.value.response.headers["retry-after"]) > 25


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_an_unreachable_only_route_is_a_502(client, stream):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="solo/refuse", messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 502
    assert "could not reach" in caught.value.message


def test_a_silent_only_route_times_out_as_a_504(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="solo/stall-headers", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    assert "no first token within 0.5 s" in caught.value.message


def test_a_stream_silent_after_its_first_token_counts_against_its_route(chain, client):
    with pytest.raises(openai.APIError, match=r"sent nothing for 0\.5 s"):
        for _ in client.chat.completions.create(
            model="solo/stall-mid", messages=MESSAGES, stream=True
        ):
            pass
    metrics = httpx.get(f"{chain.url}/metrics").text
    assert 'callmissed_stream_errors_total{route="fa:solo/stall-mid"} 1' in metrics
    assert 'callmissed_requests_total{model="solo/stall-mid",outcome="error"} 1' in metrics
