"""What one delivery attempt left behind, and how it is kept with the delivery's job.

A delivery is a covey job (``covey.webhook``): a failed attempt is the job's
failed run, so its record travels in the job's error history, and the attempt
that succeeded is the job's result. Each record is a small JSON object, written
after the name of the exception that carried it (``AttemptFailed: {...}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from covey.jobs import RetryLater

Outcome = Literal["delivered", "http_error", "timeout", "network_error", "refused",
                  "circuit_open", "endpoint_disabled", "endpoint_deleted"]
#: how much of a receiver's answer is kept with an attempt
MAX_RESPONSE_CHARS = 1024


@dataclass(frozen=True)
class Attempt:
    """One attempt to deliver a webhook.

    Attributes:
        number: 1 for the first attempt.
        at: when it was made (Unix seconds).
        outcome: ``delivered`` (2xx), ``http_error`` (another status),
            ``timeout``, ``network_error``, ``refused`` (the address is not
            allowed), ``circuit_open`` (not sent: the endpoint's breaker is
            open), ``endpoint_disabled`` / ``endpoint_deleted`` (not sent).
        status: the HTTP status code, if an answer came.
        latency_ms: request to response, in milliseconds, if it was sent.
        response: the start of the answer's body (at most 1,024 characters).
        error: what went wrong, for the outcomes without a status.
    """

    number: int
    at: float
    outcome: Outcome
    status: int | None = None
    latency_ms: float | None = None
    response: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        # by hand, not dataclasses.asdict: this runs once per attempt, on the hot path
        fields = {"number": self.number, "at": self.at, "outcome": self.outcome,
                  "status": self.status, "latency_ms": self.latency_ms,
                  "response": self.response, "error": self.error}
        return json.dumps({k: v for k, v in fields.items() if v is not None},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, number: int) -> Attempt:
        """An attempt from its stored record; a record it cannot read becomes an ``error``."""
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(int(data.get("number", number)), float(data["at"]), data["outcome"],
                       data.get("status"), data.get("latency_ms"), data.get("response"),
                       data.get("error"))
        except (ValueError, KeyError, TypeError):
            return cls(number, 0.0, "network_error", error=text)


class AttemptFailed(RetryLater):
    """This attempt failed; the next one follows the endpoint's schedule."""

    def __init__(self, attempt: Attempt, delay: float) -> None:
        super().__init__(delay, attempt.to_json())
        self.attempt = attempt


class DeliveryFailed(Exception):
    """The last attempt failed (or the endpoint is gone): the dead-letter."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.to_json())
        self.attempt = attempt


def attempts_from(errors: tuple[str, ...], result: Any) -> tuple[Attempt, ...]:
    """The attempts of a delivery from its job's error history and result."""
    out = [Attempt.from_json(e.partition(": ")[2] or e, i + 1) for i, e in enumerate(errors)]
    if isinstance(result, str):
        out.append(Attempt.from_json(result, len(out) + 1))
    return tuple(out)
