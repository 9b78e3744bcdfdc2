"""Request tags: the x-callmissed-tags header (ours: strict) and the body's metadata (lenient)."""

from __future__ import annotations

import pytest

from callmissed.errors import InvalidRequest
from callmissed.tags import MAX_TAG_CHARS, MAX_TAGS, request_tags


def test_no_header_and_no_metadata_is_no_tags():
    assert request_tags({}, {"model": "m"}) == ()


def test_header_tags_are_trimmed_deduplicated_and_ordered():
    headers = {"x-callmissed-tags": " team:search ,nightly,, team:search"}
    assert request_tags(headers, {}) == ("team:search", "nightly")


def test_metadata_strings_become_key_value_tags():
    body = {"metadata": {"team": "billing", "run": "42", "n": 3, "nested": {"a": "b"}}}
    assert request_tags({}, body) == ("team:billing", "run:42")


def test_the_header_comes_first_and_the_total_is_bounded():
    metadata = {f"k{n}": "v" for n in range(20)}
    tags = request_tags({"x-callmissed-tags": "h1,h2"}, {"metadata": metadata})
    assert tags[:2] == ("h1", "h2") and len(tags) == MAX_TAGS


def test_metadata_that_cannot_be_a_tag_is_left_out_not_refused():
    body = {"metadata": {"long": "x" * MAX_TAG_CHARS, "bad": "a\nb", "ok": "yes"}}
    assert request_tags({}, body) == ("ok:yes",)
    assert request_tags({}, {"metadata": ["not", "an", "object"]}) == ()


@pytest.mark.parametrize(
    "header",
    [",".join(f"t{n}" for n in range(MAX_TAGS + 1)), "x" * (MAX_TAG_CHARS + 1), "a\tb"],
    ids=["too-many", "too-long", "control-character"],
)
def test_a_malformed_header_is_refused(header):
    with pytest.raises(InvalidRequest):
        request_tags({"x-callmissed-tags": header}, {})
