"""An upstream that is hostile or broken gets only bounded trust: an error body is read in part,
a compressed body inflates only so far, one event may grow only so long (docs/security.md)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from callmissed.upstream.http1 import Inflater
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.fakes.hostile import FLOOD, HostileUpstream, start_hostile_upstream

MESSAGES = [{"role": "user", "content": "hi"}]
EVENT_LIMIT = 1024 * 1024
CONFIG = """
[providers.hostile]
type = "openai"
base_url = "{url}/hostile/v1"
"""
MODELS = [
    "flood-error",
    "deflate-bomb",
    "deflate-bomb-stream",
    "endless-event",
    "deep-answer",
    "polite",
]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    fake, stop = start_hostile_upstream()
    yield fake
    stop()


@pytest.fixture(scope="module")
def hostile_gateway(upstream, hostile, tmp_path_factory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("hostile")
    config = workdir / "hostile.toml"
    models = "".join(f'\n[models."{name}"]\nroutes = ["hostile:{name}"]\n' for name in MODELS)
    config.write_text(CONFIG.format(url=hostile.url) + models)
    running = start_gateway(
        upstream,
        workdir,
        CALLMISSED_CONFIG=str(config),
        CALLMISSED_SSE_EVENT_BYTES=str(EVENT_LIMIT),
        CALLMISSED_MAX_ATTEMPTS="1",
    )
    yield running
    stop_gateway(running)


@pytest.fixture
def sdk(hostile_gateway, client_for) -> openai.OpenAI:
    return client_for(hostile_gateway)  # type: ignore[no-any-return]


def _sent(hostile: HostileUpstream, model: str) -> int:
    """The body bytes the fake got out before the gateway hung up (its handler is done)."""
    deadline = time.monotonic() + 30
    while model not in hostile.sent:
        assert time.monotonic() < deadline, f"the upstream never finished {model}"
        time.sleep(0.02)
    return hostile.sent.pop(model)


def test_an_endless_error_body_is_read_only_in_part(hostile_gateway, hostile, sdk):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="flood-error", messages=MESSAGES)
    # 64 KiB read, then the connection closed: the rest stays in socket buffers, unread.
    assert _sent(hostile, "flood-error") < FLOOD // 4


def test_a_deflate_bomb_is_refused_not_inflated(hostile_gateway, sdk):
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model="deflate-bomb", messages=MESSAGES)
    assert raised.value.status_code == 502
    # Refused once past its first MiBs at ~1,000:1 (over MAX_RATIO), not at the 32 MiB limit.
    refused = re.search(r"inflates past (\d+) bytes", raised.value.message)
    assert refused is not None
    assert int(refused[1]) < Inflater.FREE_BYTES + 2 * Inflater.STEP


def test_a_stream_that_turns_into_a_deflate_bomb_ends_with_an_error(hostile_gateway, sdk):
    stream = sdk.chat.completions.create(
        model="deflate-bomb-stream", messages=MESSAGES, stream=True
    )
    texts = []
    # The bomb is one endless event: inflated a step at a time, it meets the event cap first.
    with pytest.raises(openai.APIError, match=f"event longer than {EVENT_LIMIT} bytes"):
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content if chunk.choices else "")
    assert texts == ["Hello"]  # the first token went out; the bomb never did


def test_an_event_that_never_ends_is_cut_at_the_limit(hostile_gateway, hostile, sdk):
    stream = sdk.chat.completions.create(model="endless-event", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match=f"event longer than {EVENT_LIMIT} bytes"):
        for _ in stream:
            pass
    assert _sent(hostile, "endless-event") < FLOOD // 4


def test_an_answer_nested_too_deep_to_encode_is_the_upstream_s_error(hostile_gateway, sdk):
    logged = len(hostile_gateway.log.read_text())
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model="deep-answer", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert "nested deeper than 254 levels" in raised.value.message
    assert "Traceback" not in hostile_gateway.log.read_text()[logged:]


def test_the_gateway_answers_as_usual_after_all_that(hostile_gateway, sdk):
    answer = sdk.chat.completions.create(model="polite", messages=MESSAGES, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in answer) == "Hello"
    assert httpx.get(f"{hostile_gateway.url}/healthz").status_code == 200
