"""callmissed.errors: each failure renders with the status and type its dialect's SDK expects."""

from __future__ import annotations

import pytest

from callmissed.errors import (
    AuthenticationFailed,
    GatewayError,
    InsufficientCredits,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    to_anthropic,
    to_openai,
)


@pytest.mark.parametrize(
    ("exc", "status", "error_type"),
    [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (RequestTooLarge("x"), 413, "request_too_large"),
        (AuthenticationFailed("x"), 401, "authentication_error"),
        (InsufficientCredits("x"), 402, "billing_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (ModelNotFound("x"), 404, "not_found_error"),
        (RateLimited("x"), 429, "rate_limit_error"),
        (GatewayError("x"), 500, "api_error"),
        (UpstreamError("x"), 500, "api_error"),
        (UpstreamRejected("x", upstream_status=401), 500, "api_error"),
        (UpstreamRejected("x", upstream_status=403), 403, "permission_error"),
        (UpstreamRejected("x", upstream_status=413), 413, "request_too_large"),
        (UpstreamRejected("x", upstream_status=429), 429, "rate_limit_error"),
        (UpstreamTimeout("x"), 504, "timeout_error"),
        (UpstreamOverloaded("x"), 529, "overloaded_error"),
    ],
)
def test_anthropic_statuses_and_types(exc, status, error_type):
    assert to_anthropic(exc) == (
        status,
        {"type": "error", "error": {"type": error_type, "message": "x"}},
    )


def test_the_openai_surface_keeps_its_own_statuses():
    assert to_openai(UpstreamError("x"))[0] == 502
    assert to_openai(UpstreamOverloaded("x"))[0] == 503
    assert to_openai(RequestTooLarge("x"))[1]["error"]["type"] == "invalid_request_error"
