"""The reasoning_effort matrix: what each client value becomes before it reaches the upstream.

The matrix itself is data (the [reasoning.*] policies in catalog.toml); this module applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callmissed.errors import InvalidRequest
from callmissed.settings import EFFORT_VALUES, ModelSettings

__all__ = ["DROPPED", "apply_reasoning_effort"]

DROPPED = "dropped"


def apply_reasoning_effort(
    body: dict[str, Any], model: ModelSettings, policies: Mapping[str, Mapping[str, str]]
) -> str | None:
    """Rewrite body["reasoning_effort"] in place; return what the upstream will get.

    None means the client sent no reasoning_effort; "dropped" means it was removed.
    """
    if "reasoning_effort" not in body:
        return None
    value = body["reasoning_effort"]
    if model.reasoning == "passthrough":
        return "null" if value is None else str(value)
    policy = policies[model.reasoning]
    if value is None:
        if policy["none"] == "drop":
            del body["reasoning_effort"]
            return DROPPED
        return "null"
    if value not in EFFORT_VALUES:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of {', '.join(EFFORT_VALUES)} for {model.name}; "
            f"got {value!r}.",
            param="reasoning_effort",
        )
    sent = policy[value]
    if sent == "drop":
        del body["reasoning_effort"]
        return DROPPED
    body["reasoning_effort"] = sent
    return sent
