"""callmissed.token_estimate: the rough input-token count count_tokens serves."""

from __future__ import annotations

from typing import Any

from callmissed.token_estimate import estimate_input_tokens


def _chat(*messages: dict[str, Any], tools: list[Any] | None = None) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **({"tools": tools} if tools else {})}


def test_ascii_text_is_about_four_characters_a_token():
    chat = _chat({"role": "user", "content": "x" * 400})
    assert estimate_input_tokens(chat) == 4 + 100


def test_other_scripts_count_a_token_per_character():
    chat = _chat({"role": "user", "content": "नमस्ते दुनिया"})  # 12 Devanagari marks, a space
    assert estimate_input_tokens(chat) == 4 + 1 + 12


def test_images_files_tool_calls_and_tools_all_count():
    parts = [
        {"type": "text", "text": "abcd"},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "file", "file": {"file_data": "data:,"}},
    ]
    call = {"id": "c", "type": "function", "function": {"name": "getw", "arguments": "{}"}}
    tools = [{"type": "function", "function": {"name": "f"}}]
    chat = _chat(
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "hmm."},
        tools=tools,
    )
    tools_json = len('[{"type":"function","function":{"name":"f"}}]')
    assert (
        estimate_input_tokens(chat)
        == (4 + 1 + 1600 + 3000) + (4 + 1 + 1 + 1) + (tools_json + 3) // 4
    )


def test_never_zero():
    assert estimate_input_tokens(_chat({"role": "user", "content": ""})) == 4
    assert estimate_input_tokens({"messages": []}) == 1
