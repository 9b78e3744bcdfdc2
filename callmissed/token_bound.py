"""The most tokens a prompt can be: what a hold is sized on, so that it never undershoots.

token_estimate.py guesses a prompt's tokens (~4 characters a token); a real tokenizer can need
far more ("x x x ...", one token a two-byte "x ", or Devanagari at a token a character). A bound
holds whatever the tokenizer: every token of a byte-level BPE or byte-fallback SentencePiece
vocabulary covers at least one byte of UTF-8 text, so a text is at most its UTF-8 bytes, and
the chat template adds a fixed number of marker tokens around each message and part.

What this counts (docs/credits.md says it for operators):
  * every string in the conversation (`messages`, with a Messages body's `system`, or a
    Responses body's `input` and `instructions`) at its UTF-8 bytes: text, names, tool calls and
    their ids, tool results;
  * MESSAGE_OVERHEAD a message or Responses item, PART_OVERHEAD each object within one (a content
    part, a tool call), REQUEST_OVERHEAD once (BOS, the answer's primer, a template's default
    system lines such as gpt-oss's and Llama 3.1's);
  * tool definitions, `response_format` and a Responses `text` format as their JSON bytes, and
    TOOLS_OVERHEAD once if there are tools (Anthropic's tool-use system prompt is up to 530);
  * an image part at IMAGE_TOKENS, an audio part from its bytes (AUDIO_BYTES_PER_TOKEN); other
    parts (a file's base64) at their strings' bytes.

Pure; no I/O; one pass over the strings, without re-encoding them except a non-ASCII one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "AUDIO_BYTES_PER_TOKEN",
    "EMBEDDING_OVERHEAD",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "PART_OVERHEAD",
    "REQUEST_OVERHEAD",
    "TOOLS_OVERHEAD",
    "embedding_bound",
    "prompt_bound",
    "utf8_length",
]

MESSAGE_OVERHEAD = 12  # role and turn markers around a message (Llama 3: 4, Harmony: 5)
PART_OVERHEAD = 4  # separators around a part or a tool call (Qwen's <tool_call> wrapper)
REQUEST_OVERHEAD = 128  # BOS, the answer's primer, a template's default system lines (~60)
TOOLS_OVERHEAD = 1024  # a tool-use preamble (Anthropic's: 264-530 tokens by model)
# The most any model we know of bills an image: gpt-4o-mini, up to ~48,000 for one high-detail
# image (33x GPT-4o's count, to price it as GPT-4o does); then Qwen2.5-VL at its default
# max_pixels (16,384). Claude's are at most ~1,600, GPT-4.1 / o-series / GPT-5 ~3,800, Gemini's
# ~4,100. A hold gives back what the image did not cost, so the largest is held for all.
IMAGE_TOKENS = 49_152
# Audio comes as base64 of WAV or MP3: at least 1,000 bytes a second (MP3's lowest bitrate,
# 8 kbit/s), which the most tokens a second any upstream bills (Gemini's 32) fits 31 times.
AUDIO_BYTES_PER_TOKEN = 25
EMBEDDING_OVERHEAD = 4  # an embedding model's start and end tokens ([CLS] ... [SEP])

_IMAGES = frozenset({"image_url", "input_image", "image"})
_TOOL_FIELDS = ("tools", "functions")  # tool definitions: JSON, plus the preamble
_SCHEMA_FIELDS = ("response_format", "text", "tool_choice")  # rendered into the prompt too


def prompt_bound(body: Mapping[str, Any]) -> int:
    """The most prompt tokens an upstream can bill for a Chat Completions body (an Anthropic
    request's translation is one), a Messages body passed through to an upstream that speaks
    Messages (its `system` too), or a Responses body."""
    total = REQUEST_OVERHEAD
    conversation = body.get("messages")
    system = body.get("system")  # a Messages body passed through (relay_messages.py)
    if system is not None:
        total += MESSAGE_OVERHEAD + _walk(system)
    if conversation is None:  # a Responses body
        conversation = body.get("input")
        total += _walk(body.get("instructions"))
    if conversation.__class__ is str:
        total += MESSAGE_OVERHEAD + _walk(conversation)
    elif conversation.__class__ is list:
        total += MESSAGE_OVERHEAD * len(conversation) + _walk(conversation)
    for name in _TOOL_FIELDS:
        tools = body.get(name)
        if tools:
            total += TOOLS_OVERHEAD + len(orjson.dumps(tools))
    for name in _SCHEMA_FIELDS:
        value = body.get(name)
        if value is not None:
            total += len(orjson.dumps(value))
    return total


def embedding_bound(inputs: Sequence[str | Sequence[int]]) -> int:
    """The most tokens embeddings inputs can be: each text at its UTF-8 bytes and the model's
    start and end tokens, each token array exactly."""
    return sum(
        utf8_length(item) + EMBEDDING_OVERHEAD if isinstance(item, str) else len(item)
        for item in inputs
    )


def utf8_length(text: str) -> int:
    """The UTF-8 bytes of `text`, encoding it only if it is not ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _walk(value: Any) -> int:
    """The bound of one value of a conversation: strings at their bytes, objects with their
    separators, images and audio at their own bounds."""
    # Strings are counted inline, not by a call each: this runs over every request's prompt.
    kind = value.__class__
    if kind is str:
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if kind is dict:
        part = value.get("type")
        if part is not None:  # most objects (every message) have no type to look up
            if part in _IMAGES:
                return PART_OVERHEAD + IMAGE_TOKENS
            if part == "input_audio":
                return PART_OVERHEAD + _audio(value.get("input_audio"))
        items: Any = value.values()
        total = PART_OVERHEAD
    elif kind is list:
        items, total = value, 0
    elif kind is int or kind is float:
        return len(repr(value))  # a number a template writes out, digit by digit at worst
    else:
        return 0  # null, true, false: no text of their own
    for item in items:
        if item.__class__ is str:
            total += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
        elif item is not None:
            total += _walk(item)
    return total


def _audio(audio: Any) -> int:
    data = audio.get("data") if audio.__class__ is dict else None
    size = len(data) * 3 // 4 if data.__class__ is str else 0  # base64 -> bytes
    return size // AUDIO_BYTES_PER_TOKEN + 1
