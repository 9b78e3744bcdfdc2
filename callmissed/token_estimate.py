"""A rough input-token count for an OpenAI-format chat body or embeddings input, for when no
tokenizer is at hand.

Every upstream tokenizes differently and we ship none of their tokenizers, so this is an
estimate and says so wherever it is served (docs/anthropic.md, count_tokens). Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "ascii_output_tokens",
    "estimate_embedding_tokens",
    "estimate_input_tokens",
    "estimate_output_tokens",
]

_MESSAGE_TOKENS = 4  # role markers and separators around each message
_IMAGE_TOKENS = 1600  # ~1.15 megapixels, the size Anthropic scales large images down to
_FILE_TOKENS = 3000  # a few pages; a file's real length is unknown without parsing it
# A Messages body's blocks that are text at heart, counted as their JSON.
_MESSAGES_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking"})


def estimate_input_tokens(chat: Mapping[str, Any]) -> int:
    """About 4 characters per token for ASCII text and 1 per other character (CJK and Indic
    scripts), plus fixed costs per message, image and file; tools count as their JSON.

    `chat` is a checked body (formats.anthropic.parse_message_request's output, for one), or a
    Messages body passed through as the client sent it (its system, and blocks as their JSON).
    """
    total = 0
    for message in chat["messages"]:
        content = message.get("content")
        if content.__class__ is str and content.isascii():  # most messages: counted inline
            total += _MESSAGE_TOKENS + (len(content) + 3) // 4
        else:
            total += _MESSAGE_TOKENS + _content_tokens(content)
        reasoning = message.get("reasoning")
        if reasoning:
            total += _text_tokens(reasoning)
        for call in message.get("tool_calls") or ():
            function = call["function"]
            total += _text_tokens(function["name"]) + _text_tokens(function["arguments"])
    if chat.get("tools"):
        total += _text_tokens(orjson.dumps(chat["tools"]).decode())
    if chat.get("system"):  # a Messages body passed through (relay_messages.py)
        total += _content_tokens(chat["system"])
    return max(total, 1)


def estimate_embedding_tokens(inputs: Sequence[str | Sequence[int]]) -> int:
    """Tokens in embeddings inputs: each text as chat text is (at least one token), each token
    array exactly."""
    return sum(
        max(1, _text_tokens(item)) if isinstance(item, str) else len(item) for item in inputs
    )


def estimate_output_tokens(text: str, pieces: int = 1) -> int:
    """Tokens in streamed text that came in `pieces` non-empty pieces: as for input, but at least
    one a piece, because most servers stream a token per chunk."""
    if not text:
        return 0
    if text.isascii():
        return ascii_output_tokens(len(text), pieces)
    other = len(text) - len(text.encode("ascii", "ignore"))  # non-ASCII characters, at C speed
    return max(pieces, (len(text) - other) // 4 + other)


def ascii_output_tokens(length: int, pieces: int) -> int:
    """estimate_output_tokens() of ASCII text of this length, from its length alone."""
    return max(pieces, length >> 2)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    total = 0
    for part in content or ():
        kind = part["type"]
        if kind == "text":
            total += _text_tokens(part["text"])
        elif kind in _MESSAGES_BLOCKS:
            total += _text_tokens(orjson.dumps(part).decode())
        else:
            total += _IMAGE_TOKENS if kind in ("image_url", "image") else _FILE_TOKENS
    return total


def _text_tokens(text: str) -> int:
    if text.isascii():
        return (len(text) + 3) // 4
    other = len(text) - len(text.encode("ascii", "ignore"))  # non-ASCII characters, at C speed
    return (len(text) - other + 3) // 4 + other
