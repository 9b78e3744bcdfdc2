"""What an upstream failure means, as one table: everything that decides reads it.

A row is keyed by the upstream's HTTP status ("503"; "4xx" and "5xx" for the statuses no row
names) or, for a failure without one, by its kind ("unreachable", "malformed", ...). Its columns:

* `error`: the UpstreamError subclass raised, which fixes what the client gets in each dialect
  (callmissed/errors.py renders it);
* `fallback`: before the first token, may the request move on to the model's next route;
* `retry`: may the same route be tried again, after a backoff, once every route was tried
  (failover.py; only a row that falls back can retry);
* `breaker`: how the attempt counts for the route's health (health.py): a failure (toward
  opening its circuit breaker) or a success (the route answered: the client's own bad request);
* `outcome`: the attempt's name in metrics, traces, health and the "after 3 attempts: ..."
  message (its status, where the row covers many).

After the first token nothing falls back or retries, whatever a row says: the stream ends with an
in-band error of the row's type. A provider maps its own codes to a row (Workers AI's account
codes to "account", providers/cloudflare.py). `python -m callmissed.failures --markdown` prints
the table docs/errors.md holds; tests/test_failures.py checks the two agree.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from callmissed.errors import (
    UpstreamBodyTooLarge,
    UpstreamBroken,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
    to_anthropic,
    to_openai,
)

__all__ = [
    "ACCOUNT",
    "BROKEN",
    "FIRST_TOKEN_TIMEOUT",
    "IDLE_TIMEOUT",
    "MALFORMED",
    "TABLE",
    "TOO_LARGE",
    "TOTAL_TIMEOUT",
    "UNREACHABLE",
    "Breaker",
    "Rule",
    "failure",
    "from_status",
    "markdown",
    "outcome",
    "rule",
]


class Breaker(enum.Enum):
    FAILURE = "failure"  # counts toward opening the route's breaker; raises its error rate
    SUCCESS = "success"  # the route answered: closes a half-open breaker, resets the count


@dataclass(frozen=True, slots=True)
class Rule:
    key: str
    error: type[UpstreamError]
    fallback: bool
    retry: bool
    breaker: Breaker
    outcome: str
    when: str  # what the row means, for an operator
    streaming_only: bool = False  # it can only happen after the first token

    @property
    def status(self) -> int | None:
        """The upstream status an error of this row carries (None: the upstream gave none)."""
        return int(self.key) if self.key.isdigit() else _KIND_STATUS.get(self.key)


# The kinds of failure that come without an HTTP status (or, for ACCOUNT, with a status that
# alone would say something else).
UNREACHABLE = "unreachable"
FIRST_TOKEN_TIMEOUT = "first_token_timeout"
BROKEN = "broken"
MALFORMED = "malformed"
TOO_LARGE = "too_large"
IDLE_TIMEOUT = "idle_timeout"
TOTAL_TIMEOUT = "total_timeout"
ACCOUNT = "account"
_KIND_STATUS = {ACCOUNT: 403}

_F, _S = Breaker.FAILURE, Breaker.SUCCESS
_ERR, _REJ, _TIME, _OVER = UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamOverloaded
_GONE, _BROKE = UpstreamUnreachable, UpstreamBroken

# key, error, fallback, retry, breaker, outcome, when
TABLE: tuple[Rule, ...] = (
    Rule("400", _REJ, False, False, _S, "400", "the request itself is wrong"),
    Rule("401", _ERR, True, False, _F, "401", "the upstream refused our credentials"),
    Rule("402", _ERR, True, False, _F, "402", "our balance at that upstream ran out"),
    Rule("403", _REJ, False, False, _S, "403", "the request is not allowed"),
    Rule("404", _REJ, True, False, _F, "404", "the upstream does not serve the route's model id"),
    Rule("408", _TIME, True, False, _F, "timeout", "the upstream timed out reading the request"),
    Rule("409", _ERR, True, False, _F, "409", "a conflict at the upstream"),
    Rule("413", _REJ, False, False, _S, "413", "the request is too large for the model"),
    Rule("422", _REJ, False, False, _S, "422", "the request is well-formed but invalid"),
    Rule("425", _ERR, True, False, _F, "425", "the upstream wants the request later"),
    Rule("429", _REJ, True, False, _F, "rate_limited", "rate limited; its Retry-After is kept"),
    Rule("4xx", _ERR, False, False, _F, "", "any other 4xx"),
    Rule("500", _ERR, True, True, _F, "500", "the upstream failed"),
    Rule("502", _ERR, True, True, _F, "502", "a proxy before the upstream failed"),
    Rule("503", _OVER, True, True, _F, "503", "the upstream is overloaded or down"),
    Rule("504", _TIME, True, False, _F, "timeout", "a proxy before the upstream timed out"),
    *(
        Rule(str(code), _ERR, True, True, _F, str(code), "Cloudflare: origin unreachable")
        for code in (520, 521, 522, 523)
    ),
    Rule("524", _TIME, True, False, _F, "timeout", "Cloudflare: the origin timed out"),
    Rule("525", _ERR, True, True, _F, "525", "Cloudflare: TLS handshake with the origin failed"),
    Rule("526", _ERR, True, True, _F, "526", "Cloudflare: the origin's certificate is invalid"),
    Rule("529", _OVER, True, True, _F, "529", "the upstream is overloaded"),
    Rule("5xx", _ERR, False, False, _F, "", "any other 5xx"),
    Rule(UNREACHABLE, _GONE, True, True, _F, "broken", "no answer began: refused, reset, TLS"),
    Rule(FIRST_TOKEN_TIMEOUT, _TIME, True, False, _F, "timeout", "no first byte or token in time"),
    Rule(BROKEN, _BROKE, True, True, _F, "broken", "the answer began, then broke off"),
    Rule(MALFORMED, _BROKE, True, True, _F, "broken", "the answer is not valid SSE or JSON"),
    Rule(TOO_LARGE, _BROKE, True, False, _F, "broken", "an answer or event past its byte limit"),
    Rule(IDLE_TIMEOUT, _TIME, False, False, _F, "timeout", "silence past the idle timeout", True),
    Rule(TOTAL_TIMEOUT, _TIME, False, False, _F, "timeout", "the total timeout passed"),
    Rule(ACCOUNT, _REJ, True, False, _F, "403", "our account may not use the model"),
)
_BY_KEY = {row.key: row for row in TABLE}
# The row of an error a transport raised (callmissed/upstream/contract.py: it knows the class of
# failure, not the table), most specific class first. A timeout there is a connection or an
# answer that did not come in time, as the first-token timeout is.
_BY_CLASS: tuple[tuple[type[UpstreamError], str], ...] = (
    (UpstreamBodyTooLarge, TOO_LARGE),
    (UpstreamBroken, BROKEN),
    (UpstreamUnreachable, UNREACHABLE),
    (UpstreamTimeout, FIRST_TOKEN_TIMEOUT),
)


def rule(error: UpstreamError) -> Rule:
    """The row that decides what happens after `error`."""
    found = _BY_KEY.get(error.kind)
    if found is not None:
        return found
    if error.upstream_status:
        return _status_rule(error.upstream_status)
    kind = next((kind for cls, kind in _BY_CLASS if isinstance(error, cls)), BROKEN)
    return _BY_KEY[kind]


def outcome(error: UpstreamError) -> str:
    """How the attempt that failed with `error` is named (the table's outcome column)."""
    return rule(error).outcome or str(error.upstream_status)


def _status_rule(status: int) -> Rule:
    found = _BY_KEY.get(str(status))
    if found is not None:
        return found
    return _BY_KEY["4xx" if 400 <= status < 500 else "5xx"]


def failure(
    kind: str, message: str, *, provider: str = "", retry_after: float | None = None
) -> UpstreamError:
    """The error of a failure of one of the kinds above."""
    row = _BY_KEY[kind]
    status = row.status
    error = row.error(message, provider=provider, upstream_status=status, retry_after=retry_after)
    error.kind = kind
    return error


def from_status(
    status: int, message: str, *, provider: str = "", retry_after: float | None = None
) -> UpstreamError:
    """The error of an upstream's answer with `status` (or an error it reported with one)."""
    row = _status_rule(status)
    error = row.error(message, provider=provider, upstream_status=status, retry_after=retry_after)
    error.kind = row.key
    return error


def markdown() -> str:
    """The table as docs/errors.md shows it: one line per row, what each client sees."""
    lines = [
        "| upstream answer | another route | same route again | breaker | named "
        "| OpenAI client | Anthropic client | meaning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in TABLE:
        sample = failure(row.key, "x") if not row.key[0].isdigit() else _sample(row)
        openai_status, openai_body = to_openai(sample)
        anthropic_status, anthropic_body = to_anthropic(sample)
        openai = f"`{openai_body['error']['type']}` `{sample.code}`"
        anthropic = f"`{anthropic_body['error']['type']}`"
        if row.streaming_only:  # the 200 went out with the stream's first token
            openai, anthropic = f"in-band {openai}", f"in-band {anthropic}"
        else:
            openai, anthropic = f"{openai_status} {openai}", f"{anthropic_status} {anthropic}"
        retry = "yes, after backoff" if row.retry else "no"
        fallback = "yes" if row.fallback else "**no**"
        named = f"`{row.outcome}`" if row.outcome else "its status"
        breaker = row.breaker.value
        cells = (f"`{row.key}`", fallback, retry, breaker, named, openai, anthropic, row.when)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sample(row: Rule) -> UpstreamError:
    status = int(row.key) if row.key.isdigit() else (418 if row.key == "4xx" else 501)
    return from_status(status, "x")


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m callmissed.failures --markdown")
    sys.stdout.write(markdown())
