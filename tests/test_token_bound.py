"""The prompt bound (callmissed/token_bound.py): never below what a byte-level tokenizer counts,
with images, audio, tools and Responses bodies at their documented bounds."""

from __future__ import annotations

import base64
import random

import orjson

from callmissed.formats.embeddings import parse_embedding_request
from callmissed.token_bound import (
    AUDIO_BYTES_PER_TOKEN,
    EMBEDDING_OVERHEAD,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PART_OVERHEAD,
    REQUEST_OVERHEAD,
    TOOLS_OVERHEAD,
    embedding_bound,
    prompt_bound,
)
from callmissed.token_estimate import estimate_input_tokens

ALPHABET = "x ,.aé漢字नमस्ते🙂\n"


def _message(role: str, content: object) -> dict[str, object]:
    return {"role": role, "content": content}


def test_text_is_held_at_its_utf8_bytes_whatever_its_script():
    rng = random.Random(7)
    for _ in range(200):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 300)))
        chat = {"messages": [_message("user", text)]}
        expected = REQUEST_OVERHEAD + MESSAGE_OVERHEAD + PART_OVERHEAD + 4 + len(text.encode())
        assert prompt_bound(chat) == expected
        assert prompt_bound(chat) >= estimate_input_tokens(chat)


def test_every_string_of_a_message_counts_tool_calls_and_their_results_too():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    strings = len("assistant" + "call_1function" + "f" + '{"a":1}' + "tool" + "call_1" + "sunny")
    objects = 2 + 2  # the two messages, and the call with its function
    assert prompt_bound({"messages": messages}) == (
        REQUEST_OVERHEAD + 2 * MESSAGE_OVERHEAD + objects * PART_OVERHEAD + strings
    )


def test_tools_and_schemas_count_as_their_json_with_one_preamble():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    bare: dict[str, object] = {"messages": []}
    chat = {**bare, "tools": tools, "response_format": schema, "tool_choice": "auto"}
    extra = TOOLS_OVERHEAD + len(orjson.dumps(tools)) + len(orjson.dumps(schema)) + len(b'"auto"')
    assert prompt_bound(chat) == prompt_bound(bare) + extra


def test_an_image_is_held_at_its_bound_however_many_bytes_it_has():
    for url in ("https://example.com/cat.png", "data:image/png;base64," + "A" * 2_000_000):
        part = {"type": "image_url", "image_url": {"url": url}}
        chat = {"messages": [_message("user", [part])]}
        assert prompt_bound(chat) == (
            REQUEST_OVERHEAD + MESSAGE_OVERHEAD + 2 * PART_OVERHEAD + 4 + IMAGE_TOKENS
        )


def test_audio_is_held_from_its_bytes_at_the_densest_rate_any_upstream_bills():
    seconds = 60
    audio = base64.b64encode(b"\0" * 1_000 * seconds).decode()  # a minute of 8 kbit/s MP3
    part = {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}}
    tokens = prompt_bound({"messages": [_message("user", [part])]}) - prompt_bound(
        {"messages": [_message("user", [])]}
    )
    assert tokens == PART_OVERHEAD + 1_000 * seconds // AUDIO_BYTES_PER_TOKEN + 1
    assert tokens >= 32 * seconds  # Gemini's 32 tokens a second


def test_a_responses_body_counts_instructions_and_every_item():
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "नमस्ते"}]},
        {"type": "function_call_output", "call_id": "c", "output": "22C"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
    ]
    body = {"input": items, "instructions": "Be brief."}
    strings = len("user" + "input_text") + len("नमस्ते".encode())
    strings += len("function_call_output" + "c" + "22C") + len("user") + len("Be brief.")
    objects = 3 + 1  # the items, and the text part (the image is its own bound)
    assert prompt_bound(body) == (
        REQUEST_OVERHEAD
        + 3 * MESSAGE_OVERHEAD
        + objects * PART_OVERHEAD
        + strings
        + PART_OVERHEAD
        + IMAGE_TOKENS
    )
    assert prompt_bound({"input": "hi"}) == REQUEST_OVERHEAD + MESSAGE_OVERHEAD + 2


def test_a_messages_body_passed_through_counts_its_system_prompt():
    """Anthropic's own API gets the client's Messages body (relay_messages.py): its `system`,
    text or blocks, is prompt too."""
    user = [_message("user", "hi")]
    bare = prompt_bound({"messages": user})
    assert prompt_bound({"messages": user, "system": "Be brief."}) == (
        bare + MESSAGE_OVERHEAD + len("Be brief.")
    )
    blocks = [{"type": "text", "text": "नमस्ते"}]
    assert prompt_bound({"messages": user, "system": blocks}) == (
        bare + MESSAGE_OVERHEAD + PART_OVERHEAD + len("text") + len("नमस्ते".encode())
    )


def test_embedding_inputs_are_bytes_each_with_its_markers_and_token_arrays_exact():
    assert embedding_bound(["x x", "दुनिया"]) == 3 + 18 + 2 * EMBEDDING_OVERHEAD
    assert embedding_bound([[1, 2, 3], [4]]) == 4
    request = parse_embedding_request({"model": "m", "input": ["x " * 100]})
    assert request.prompt_bound == 200 + EMBEDDING_OVERHEAD > request.prompt_estimate
