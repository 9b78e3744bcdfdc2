"""POST /v1/chat/completions, driven by the official openai SDK against fake upstreams."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _text(stream) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.mark.parametrize(
    ("model", "route", "upstream_model", "dialect"),
    [
        ("gpt-oss-120b", "cloudflare", "@cf/openai/gpt-oss-120b", "cloudflare"),
        ("kimi-k2.6", "cloudflare", "@cf/moonshotai/kimi-k2.6", "cloudflare"),
        ("sarvam-105b", "sarvam", "sarvam-105b", "sarvam"),
        ("auto", "openrouter", "openrouter/free", "openrouter"),
        ("anthropic/claude-haiku-4.5", "openrouter", "anthropic/claude-haiku-4.5", "openrouter"),
        ("openai/gpt-5.1", "openrouter", "openai/gpt-5.1", "openrouter"),
        ("local-model", "local", "hello", "local"),
    ],
)
def test_streams_from_every_route(client, gateway, model, route, upstream_model, dialect):
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as raw:
        assert raw.headers["x-callmissed-route"] == route
        assert raw.headers["x-callmissed-upstream-model"] == upstream_model
        assert raw.headers["x-request-id"].startswith("req_")
        assert _text(raw.parse()) == "Hello world"
    received = gateway.upstream.last(upstream_model)
    assert received.dialect == dialect
    assert received.body["stream_options"] == {"include_usage": True}


def test_cloudflare_gets_token_and_an_explicit_max_tokens(client, gateway):
    client.chat.completions.create(model="glm-4.7-flash", messages=MESSAGES)
    received = gateway.upstream.last("@cf/zai-org/glm-4.7-flash")
    assert received.path == "/client/v4/accounts/acct123/ai/v1/chat/completions"
    assert received.headers["Authorization"] == "Bearer cf-secret-token"
    assert received.body["max_tokens"] == 32768  # never Workers AI's silent 256


def test_client_max_tokens_is_kept(client, gateway):
    client.chat.completions.create(model="gemma-4-26b-a4b-it", messages=MESSAGES, max_tokens=17)
    assert gateway.upstream.last("@cf/google/gemma-4-26b-a4b-it").body["max_tokens"] == 17


def test_non_stream_completion(client):
    completion = client.chat.completions.create(model="kimi-k2.5", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello world"
    assert completion.usage.total_tokens == 11


def test_usage_chunk_only_when_asked(client):
    chunks = list(
        client.chat.completions.create(model="local-model", messages=MESSAGES, stream=True)
    )
    assert all(chunk.usage is None for chunk in chunks)
    asked = list(
        client.chat.completions.create(
            model="local-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == []
    assert asked[-1].usage.prompt_tokens == 5
    assert asked[-1].usage.completion_tokens == 6


def test_every_field_reaches_an_openai_compatible_upstream(client, gateway):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="local-model",
        messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        seed=7,
        extra_body={"chat_template_kwargs": {"thinking": False}, "brand_new_field": [1, 2]},
    )
    body = gateway.upstream.last("hello").body
    assert body["messages"][0]["content"][1] == image
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["logprobs"], body["top_logprobs"], body["seed"]) == (True, 2, 7)
    assert body["chat_template_kwargs"] == {"thinking": False}
    assert body["brand_new_field"] == [1, 2]


def test_streamed_tool_calls_are_fixed_for_the_sdk(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with client.chat.completions.stream(
        model="local-tools", messages=MESSAGES, tools=tools
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.id == "call_1"
    assert call.function.name == "get_weather"  # not "get_weatherget_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"


def test_non_stream_object_arguments_become_a_string(client):
    completion = client.chat.completions.create(model="local-tools", messages=MESSAGES)
    assert completion.choices[0].message.tool_calls[0].function.arguments == '{"city":"Paris"}'


def test_reasoning_content_is_renamed_to_reasoning(client, gateway):
    stream = client.chat.completions.create(
        model="openrouter-fake/reasoning", messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices
    )
    assert reasoning == "Two plus two is four."
    assert all(not hasattr(c.choices[0].delta, "reasoning_content") for c in chunks if c.choices)
    completion = client.chat.completions.create(
        model="openrouter-fake/reasoning", messages=MESSAGES
    )
    assert completion.choices[0].message.reasoning == "Two plus two is four."


def test_openrouter_processing_comments_are_skipped(client):
    stream = client.chat.completions.create(model="fake/processing", messages=MESSAGES, stream=True)
    assert _text(stream) == "Hello world"


def test_crlf_and_odd_chunk_boundaries(client):
    stream = client.chat.completions.create(model="fake/crlf", messages=MESSAGES, stream=True)
    assert _text(stream) == "Hello world"


@pytest.mark.parametrize(
    "model", ["fake/drop-after-2", "fake/no-finish", "fake/bad-json", "fake/bad-utf8"]
)
def test_a_stream_that_breaks_makes_the_sdk_raise(client, model):
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_openrouter_midstream_error_chunk_makes_the_sdk_raise(client):
    stream = client.chat.completions.create(
        model="fake/midstream-error", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError, match="Provider returned error"):
        for _ in stream:
            pass


def test_an_error_read_with_the_first_tokens_comes_after_them_and_is_not_retried(client, gateway):
    stream = client.chat.completions.create(
        model="fake/content-then-error", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="Provider returned error"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received) == "Hello"
    sent = [
        r for r in gateway.upstream.requests if r.body.get("model") == "fake/content-then-error"
    ]
    assert len(sent) == 1  # content went out: no other attempt may follow


def test_error_before_the_first_chunk_is_a_real_status(client):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="fake/first-chunk-error", messages=MESSAGES, stream=True
        )


def test_openrouter_non_stream_error_in_a_200_is_an_error(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fake/midstream-error", messages=MESSAGES)
    assert caught.value.status_code == 502


@pytest.mark.parametrize(
    ("model", "status", "error"),
    [
        ("fake/error-400", 400, openai.BadRequestError),
        ("fake/error-404", 404, openai.NotFoundError),
        ("fake/error-429", 429, openai.RateLimitError),
        ("fake/error-500", 502, openai.InternalServerError),
        ("fake/error-503", 503, openai.InternalServerError),
        ("fake/error-504", 504, openai.InternalServerError),
        ("fake/error-401", 502, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_are_translated(client, model, status, error, stream):
    # One route per case: a 429's Retry-After rests its route, and the case after it would be
    # refused as resting (its own error) without reaching the upstream.
    model = model.replace("fake/", "fake-stream/") if stream else model
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    assert caught.value.status_code == status
    assert caught.value.body["message"]


@pytest.mark.parametrize(
    ("model", "status", "code_in_message"),
    [
        ("cf-capacity", 429, "3040"),  # HTTP 429, internal code 3040
        ("cf-no-such-model", 404, "5007"),  # HTTP 400 but code 5007 means "no such model"
        ("cf-bad-input", 400, "5006"),
    ],
)
def test_workers_ai_error_envelope_is_translated(client, model, status, code_in_message):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert caught.value.status_code == status
    assert f"Workers AI error {code_in_message}" in caught.value.message
    assert caught.value.type


def test_upstream_secrets_never_reach_the_client(gateway, client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fake/error-401", messages=MESSAGES)
    text = str(caught.value.body)
    for secret in ("sk-or-secret", "cf-secret-token", "sarvam-secret"):
        assert secret not in text


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_model_without_credentials_says_which_variable_to_set(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="unconfigured-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "GHOST_API_KEY" in caught.value.message


@pytest.mark.parametrize("model", ["unconfigured-model", "fake/error-401"])
def test_what_only_the_operator_can_fix_is_not_retried_by_the_sdk(gateway, model):
    # No credentials, or credentials the upstream refuses (its 401, our 502): a 5xx is retried
    # by the SDKs (twice, with backoff: seconds) unless told it is no use.
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=2)
    with sdk, pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello"}]
        )
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.request.headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "local-model"}, "messages"),
        ({"model": "local-model", "messages": []}, "messages"),
        (
            {"model": "local-model", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "local-model", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "local-model", "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": "local-model", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "local-model", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "local-model", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "local-model", "messages": MESSAGES, "top_p": 1.5}, "top_p"),
        ({"model": "local-model", "messages": MESSAGES, "n": 1.5}, "n"),
        ({"model": "local-model", "messages": MESSAGES, "tools": {"a": 1}}, "tools"),
    ],
)
def test_bad_fields_are_400_before_any_upstream_call(gateway, body, param):
    before = len(gateway.upstream.requests)
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {gateway.key}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert len(gateway.upstream.requests) == before


def test_malformed_json_is_400(gateway):
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=b'{"model": "local-model", "messages": [',
        headers={"authorization": f"Bearer {gateway.key}"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413(gateway):
    big = "x" * (33 * 1024 * 1024)
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "local-model", "messages": [{"role": "user", "content": big}]},
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("authorization", [None, "Bearer cm_wrong", "Basic abc"])
def test_requests_without_a_valid_key_are_401(gateway, authorization):
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "local-model", "messages": MESSAGES},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings", "/responses", "/models"])
def test_a_missing_key_is_asked_for_the_way_the_endpoint_reads_it(gateway, path):
    method = "GET" if path == "/models" else "POST"
    missing = httpx.request(method, f"{gateway.base_url}{path}", json={})
    assert (
        missing.json()["error"]["message"]
        == "Missing API key: send 'Authorization: Bearer cm_...'."
    )
    anthropic_style = httpx.request(
        method, f"{gateway.base_url}{path}", json={}, headers={"x-api-key": gateway.key}
    )
    assert anthropic_style.status_code == 401
    message = anthropic_style.json()["error"]["message"]
    assert "'Authorization: Bearer cm_...'" in message
    assert "x-api-key is read only by /v1/messages" in message  # the Anthropic SDK's header


def test_a_base_url_without_v1_is_told_to_add_it(gateway):
    sdk = openai.OpenAI(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    with sdk, pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(
            model="local-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert "Did you mean /v1/chat/completions? An OpenAI SDK's base_url ends in /v1." in str(
        caught.value
    )


def test_unknown_path_and_method(gateway):
    assert httpx.get(f"{gateway.url}/v2/nothing").status_code == 404
    response = httpx.get(f"{gateway.base_url}/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_retrieve_a_model_by_id_even_with_slashes(client):
    assert client.models.retrieve("kimi-k2.6").model_extra["route"] == "cloudflare"
    vendor = client.models.retrieve("anthropic/claude-opus-4.5")
    assert vendor.model_extra["route"] == "openrouter"
    assert vendor.model_extra["upstream_model"] == "anthropic/claude-opus-4.5"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_body_sent_in_chunks_without_a_length_is_read_and_limited(gateway):
    body = orjson.dumps({"model": "local-model", "messages": MESSAGES})
    headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
    url = f"{gateway.base_url}/chat/completions"
    parts = [body[:10], body[10:]]
    response = httpx.post(url, content=iter(parts), headers=headers, timeout=30)
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    big = (b"x" * (1024 * 1024) for _ in range(33))  # 33 MiB, past the 32 MiB limit
    response = httpx.post(url, content=big, headers=headers, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "local-model", "messages": MESSAGES}),
        ("/v1/messages", {"model": "local-model", "max_tokens": 10, "messages": MESSAGES}),
    ],
)
def test_json_nested_too_deep_to_forward_is_a_clear_400(gateway, path, body):
    """orjson parses JSON nested up to 1,024 deep but encodes no deeper than 254: a body in
    between must be refused as the client's error, not fail later as ours."""
    depth = 1000
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    payload = orjson.dumps(body)[:-1] + b',"metadata":' + nested + b"}"
    logged = len(gateway.log.read_text())
    headers = {"authorization": f"Bearer {gateway.key}", "x-api-key": gateway.key}
    response = httpx.post(f"{gateway.url}{path}", content=payload, headers=headers)
    assert response.status_code == 400, response.text
    assert "deeper than 254 levels" in response.text
    assert "Traceback" not in gateway.log.read_text()[logged:]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "local-model", "max_tokens": 10, "messages": MESSAGES}),
        ("/v1/responses", {"model": "local-model", "input": "Hi"}),
    ],
)
def test_a_schema_that_translation_nests_too_deep_is_a_clear_400(gateway, path, body):
    """A tool's schema one level inside the limit passes the body's check, but a translated
    body puts it a level deeper (Anthropic's input_schema and a Responses tool's parameters
    become a chat tool's function.parameters), past what orjson encodes: a 500 and a
    traceback, where it is the client's too-deep JSON all the same."""
    depth = 251  # the deepest schema such a body may carry
    schema = b'{"a":' * depth + b"1" + b"}" * depth
    field = b'"input_schema":' if path == "/v1/messages" else b'"type":"function","parameters":'
    tools = b',"tools":[{"name":"f",' + field + schema + b"}]}"
    payload = orjson.dumps(body)[:-1] + tools
    logged = len(gateway.log.read_text())
    headers = {"authorization": f"Bearer {gateway.key}", "x-api-key": gateway.key}
    response = httpx.post(f"{gateway.url}{path}", content=payload, headers=headers)
    assert response.status_code == 400, response.text
    assert "deeper than 254 levels" in response.text
    assert "Traceback" not in gateway.log.read_text()[logged:]
