"""The edits a Responses API answer passed through from an upstream that serves it needs.

Within the dialect (docs/responses.md): events go on as the upstream sent them, except those
that carry the whole Response (response.created … response.completed), where the id becomes
CallMissed's (the one GET /v1/responses/{id} knows), `store` and `previous_response_id` say what
the client asked (the upstream was asked to store nothing), and the final usage gets `cost`,
what CallMissed charged. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from callmissed.formats.responses import ResponseRequest
from callmissed.formats.responses_output import event

__all__ = ["PassThroughEditor"]

_LIFECYCLE = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
_ENDS = frozenset({"response.completed", "response.incomplete"})


class PassThroughEditor:
    """One passed-through Response (streamed or whole). `price` gives a usage's cost in USD."""

    __slots__ = ("_price", "_request", "_sequence", "response", "response_id")

    def __init__(
        self,
        request: ResponseRequest,
        response_id: str,
        price: Callable[[dict[str, Any]], float | None],
    ) -> None:
        self._request = request
        self._price = price
        self._sequence = -1  # the last sequence_number seen
        self.response_id = response_id
        self.response: dict[str, Any] | None = None  # the latest whole Response seen

    def edit(self, response: dict[str, Any], final: bool) -> dict[str, Any]:
        """A whole Response, edited in place (and returned)."""
        response["id"] = self.response_id
        response["store"] = self._request.store
        response["previous_response_id"] = self._request.previous_response_id
        usage = response.get("usage")
        if final and isinstance(usage, dict):
            usage["cost"] = self._price(usage)
            usage.pop("cost_details", None)  # what CallMissed paid; not the client's business
        self.response = response
        return response

    def feed(self, data: bytes, payload: dict[str, Any]) -> bytes:
        """One event, `data` as the upstream sent it, `payload` parsed from it."""
        kind = payload.get("type")
        sequence = payload.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence
        response = payload.get("response")
        if kind in _LIFECYCLE and isinstance(response, dict):
            if response is not self.response:  # else edited already (ends(), to store it first)
                self.edit(response, kind in _ENDS)
            return event(payload)
        name = kind.encode() if isinstance(kind, str) else b"message"
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    def ends(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The final Response, edited, if `payload` is the event that carries it: the edge
        stores it before feed() writes the event, which then says what was stored."""
        response = payload.get("response")
        if payload.get("type") in _ENDS and isinstance(response, dict):
            return self.edit(response, final=True)
        return None

    @property
    def finished(self) -> bool:
        """The final Response (completed or incomplete) has been seen."""
        return self.response is not None and self.response.get("status") in (
            "completed",
            "incomplete",
        )

    def fail(self, code: str, message: str) -> bytes:
        """response.failed (if the Response was seen) and the `error` event the SDKs raise,
        numbered after the upstream's last event (see ResponseEncoder.fail)."""
        events: list[bytes] = []
        error = {"code": code, "message": message}
        if self.response is not None:
            failed = {**self.response, "status": "failed", "error": error}
            events.append(self._next({"type": "response.failed", "response": failed}))
        nested = {"type": "server_error", "code": code, "message": message, "param": None}
        flat = {"type": "error", "code": code, "message": message, "param": None}
        events.append(self._next({**flat, "error": nested}))
        return b"".join(events)

    def _next(self, payload: dict[str, Any]) -> bytes:
        self._sequence += 1
        payload["sequence_number"] = self._sequence
        return event(payload)
