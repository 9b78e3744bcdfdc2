"""Request tags: what the console filters and sums by, from `x-callmissed-tags` or `metadata`.

A tag is a short string: each comma-separated entry of the `x-callmissed-tags` header (ours, so
a malformed one is refused with 400), and `key:value` for each string entry of the body's
`metadata` object (the OpenAI and Anthropic field, which still reaches the upstream as sent:
entries that cannot be tags are left out of them, never refused). At most MAX_TAGS, header first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callmissed.errors import InvalidRequest

__all__ = ["HEADER", "MAX_TAGS", "MAX_TAG_CHARS", "request_tags"]

HEADER = "x-callmissed-tags"
MAX_TAGS = 8  # each adds rollup rows when the request settles (docs/console.md)
MAX_TAG_CHARS = 128


def request_tags(headers: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str, ...]:
    """The request's tags, deduplicated, in order; InvalidRequest for a malformed header."""
    header = headers.get(HEADER)
    metadata = body.get("metadata")
    if header is None and not metadata:
        return ()
    tags: dict[str, None] = {}
    if header is not None:
        for part in header.split(","):
            tag = part.strip()
            if tag:
                _check(tag)
                tags[tag] = None
        if len(tags) > MAX_TAGS:
            raise InvalidRequest(
                f"The {HEADER} header has {len(tags)} tags; at most {MAX_TAGS} are allowed."
            )
    if isinstance(metadata, dict):
        for name, value in metadata.items():
            tag = f"{name}:{value}" if isinstance(value, str) else ""
            if len(tags) < MAX_TAGS and _fits(tag):
                tags[tag] = None
    return tuple(tags)


def _check(tag: str) -> None:
    if not _fits(tag):
        raise InvalidRequest(
            f"Each tag in {HEADER} must be 1 to {MAX_TAG_CHARS} printable characters;"
            f" got {tag[:40]!r}."
        )


def _fits(tag: str) -> bool:
    return 0 < len(tag) <= MAX_TAG_CHARS and tag.isprintable()
