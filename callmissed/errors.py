"""Every failure CallMissed reports, and how each client dialect renders it.

* GatewayError                     500 api_error              internal_error
  x InvalidRequest                 400 invalid_request_error  invalid_request
    + RequestTooLarge              413 invalid_request_error  request_too_large
    + RequestTimeout               408 invalid_request_error  request_timeout
  x AuthenticationFailed           401 authentication_error   invalid_api_key
  x InsufficientCredits            402 insufficient_credits   insufficient_credits
  x PermissionDenied               403 permission_error       model_not_allowed
    + ModelNotPriced               403 permission_error       model_not_priced
    + AdminDisabled                403 permission_error       admin_disabled
  x ModelNotFound                  404 not_found_error        model_not_found
  x KeyNotFound                    404 not_found_error        key_not_found
  x RequestNotFound                404 not_found_error        request_not_found
  x ResponseNotFound               404 not_found_error        response_not_found
  x RateLimited                    429 rate_limit_error       rate_limit_exceeded (+retry_after)
  x ProviderNotConfigured          503 api_error              provider_not_configured
  x ShuttingDown                   503 overloaded_error       shutting_down (+retry_after)
  x RoutesResting                  503 api_error              routes_resting (+retry_after)
  x UpstreamError                  502 api_error              upstream_error (+provider, status,
                                                                              kind)
    + UpstreamUnreachable          502 api_error              upstream_error (no answer began)
    + UpstreamBroken               502 api_error              upstream_error (the answer broke)
      + UpstreamBodyTooLarge       502 api_error              upstream_error (inflates too far)
    + UpstreamTimeout              504 timeout_error          upstream_timeout
    + UpstreamOverloaded           503 overloaded_error       upstream_overloaded
    + UpstreamRejected             4xx (the upstream's own)   upstream_rejected

Every upstream transport (callmissed/upstream/contract.py) fails with one of UpstreamUnreachable,
UpstreamBroken (UpstreamBodyTooLarge) or UpstreamTimeout, whichever transport it is.

Messages are written for a human and never carry an upstream secret or a raw upstream body.
Which UpstreamError an upstream's failure raises, and what follows it, is callmissed/failures.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "AdminDisabled",
    "AuthenticationFailed",
    "EndpointNotFound",
    "GatewayError",
    "InsufficientCredits",
    "InvalidRequest",
    "KeyNotFound",
    "MethodNotAllowed",
    "ModelNotFound",
    "ModelNotPriced",
    "PermissionDenied",
    "ProviderNotConfigured",
    "RateLimited",
    "RequestNotFound",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseNotFound",
    "RoutesResting",
    "ServerBusy",
    "ShuttingDown",
    "UpstreamBodyTooLarge",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamOverloaded",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "to_anthropic",
    "to_openai",
]


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def http_status(self) -> int:
        return self.status

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The request's body did not arrive within the body timeout (docs/security.md)."""

    status = 408
    code = "request_timeout"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InsufficientCredits(GatewayError):
    status = 402
    type = "insufficient_credits"
    code = "insufficient_credits"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotPriced(PermissionDenied):
    """A key with a credit limit asked for a model the operator has not priced."""

    code = "model_not_priced"


class AdminDisabled(PermissionDenied):
    """The admin API was called but no CALLMISSED_ADMIN_TOKEN is configured."""

    code = "admin_disabled"


class ModelNotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class KeyNotFound(GatewayError):
    """The admin API was asked about an API key id that does not exist."""

    status = 404
    type = "not_found_error"
    code = "key_not_found"


class RequestNotFound(GatewayError):
    """The admin API was asked about a request id the ledger does not hold."""

    status = 404
    type = "not_found_error"
    code = "request_not_found"


class ResponseNotFound(GatewayError):
    """No stored response has that id for this key (never made, not stored, expired, deleted,
    or another key's: all look the same)."""

    status = 404
    type = "not_found_error"
    code = "response_not_found"


class EndpointNotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "endpoint_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self._headers = list(headers)  # x-ratelimit-* (accounting/ratelimit)

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return list(self._headers)
        seconds = max(1, int(self.retry_after + 0.999))
        return [(b"retry-after", str(seconds).encode()), *self._headers]


class ProviderNotConfigured(GatewayError):
    """The model's provider has no credentials: only the operator can change that, so the SDKs,
    which retry a 503 with backoff, are told not to (they honour `x-should-retry`)."""

    status = 503
    code = "provider_not_configured"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-should-retry", b"false")]


class ShuttingDown(GatewayError):
    """The gateway is draining after SIGTERM; another instance (or a retry) will answer."""

    status = 503
    type = "overloaded_error"
    code = "shutting_down"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class ServerBusy(GatewayError):
    """A bound on what requests may hold at once is reached (docs/security.md); try again."""

    status = 503
    type = "overloaded_error"
    code = "server_busy"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class RoutesResting(GatewayError):
    """Every route of the model is resting (circuit breaker open, or a Retry-After still
    running), so nothing was sent upstream; `retry_after` says when the first is tried again."""

    status = 503
    code = "routes_resting"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]


class UpstreamError(GatewayError):
    """The upstream failed, answered garbage, or broke its stream.

    `kind` is its row of the failure table (callmissed/failures.py, which makes these errors):
    whether another route is tried, the same one again, and how its breaker counts it.
    """

    status = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.kind = ""  # set by failures.py; "" reads as its status's row (failures.rule)

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.upstream_status == 401:  # our credentials: as for ProviderNotConfigured
            return [(b"x-should-retry", b"false")]
        return []


class UpstreamUnreachable(UpstreamError):
    """No answer began: the connection was refused, reset, or failed its TLS handshake, or it
    ended before the first byte of a response."""


class UpstreamBroken(UpstreamError):
    """The answer began, then broke: the connection or stream ended early, or the upstream sent
    something that is not HTTP."""


class UpstreamBodyTooLarge(UpstreamBroken):
    """A compressed body would inflate past the limit the transport was given."""

    def __init__(self, message: str, *, provider: str = "", limit: int) -> None:
        super().__init__(message, provider=provider)
        self.limit = limit


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamOverloaded(UpstreamError):
    status = 503
    type = "overloaded_error"
    code = "upstream_overloaded"

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, round(self.retry_after))).encode())]


# The upstream's 4xx statuses that we hand on as-is, with the error type each maps to.
_REJECTION_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("upstream_authentication_error", "api_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    408: ("timeout_error", "timeout_error"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "invalid_request_error"),
    429: ("rate_limit_error", "rate_limit_error"),
}


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (a 4xx): the client's request, not our fault.

    401 from the upstream means *our* credentials are wrong, so the client sees 502, not 401.
    """

    code = "upstream_rejected"

    @property
    def http_status(self) -> int:
        if self.upstream_status == 401:
            return 502
        return self.upstream_status or 502

    @property
    def openai_type(self) -> str:
        return _REJECTION_TYPES.get(self.upstream_status or 0, ("api_error", "api_error"))[0]

    @property
    def anthropic_type(self) -> str:
        return _REJECTION_TYPES.get(self.upstream_status or 0, ("api_error", "api_error"))[1]

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.upstream_status == 429 and self.retry_after is not None:
            return [(b"retry-after", str(max(1, round(self.retry_after))).encode())]
        return []


_OPENAI_TYPES = {
    "not_found_error": "invalid_request_error",
    "permission_error": "permission_error",
    "authentication_error": "invalid_request_error",
    "overloaded_error": "server_error",
    "timeout_error": "timeout",
    "api_error": "server_error",
}


def to_openai(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    """Render as OpenAI does: `{"error": {message, type, param, code}}`."""
    error_type = exc.openai_type if isinstance(exc, UpstreamRejected) else exc.type
    body = {
        "error": {
            "message": exc.message,
            "type": _OPENAI_TYPES.get(error_type, error_type),
            "param": exc.param,
            "code": exc.code,
        }
    }
    return exc.http_status, body


_ANTHROPIC_TYPES = {
    "insufficient_credits": "billing_error",
    "timeout_error": "timeout_error",
}


def to_anthropic(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    """Render as Anthropic does: `{"type": "error", "error": {type, message}}`.

    Statuses follow Anthropic's own (https://docs.claude.com/en/api/errors, docs/errors.md):
    413 is request_too_large, overloaded is 529 (the SDK's OverloadedError), and a failed
    upstream is a 500 api_error.
    """
    error_type = exc.anthropic_type if isinstance(exc, UpstreamRejected) else exc.type
    error_type = _ANTHROPIC_TYPES.get(error_type, error_type)
    status = exc.http_status
    if error_type == "overloaded_error":
        status = 529
    elif status == 413:
        error_type = "request_too_large"
    elif status == 502 and error_type == "api_error":
        status = 500
    body = {"type": "error", "error": {"type": error_type, "message": exc.message}}
    return status, body
