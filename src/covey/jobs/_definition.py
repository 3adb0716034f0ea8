"""What an application declares and gets back for jobs."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from covey.core import ClusterError, Reason

JOB_ENTITY = "covey.Job"

PRIORITIES = {"high": 10, "normal": 0, "low": -10}
PriorityName = Literal["high", "normal", "low"]

JobState = Literal["queued", "scheduled", "running", "succeeded", "failed", "cancelled", "dead"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "cancelled", "dead"})


def priority_value(priority: PriorityName | int) -> int:
    """``high``/``normal``/``low`` or an int (higher runs first) as the stored int."""
    if isinstance(priority, bool):
        raise ClusterError("priority must be high, normal, low or an int",
                           reason=Reason.INVALID_ARGUMENT)
    if isinstance(priority, int):
        if not -32768 <= priority <= 32767:
            raise ClusterError(f"priority {priority} out of range",
                               reason=Reason.INVALID_ARGUMENT)
        return priority
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise ClusterError(f"unknown priority {priority!r} (high, normal, low or an int)",
                           reason=Reason.INVALID_ARGUMENT) from None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial * factor ** (attempt - 1)``, capped at ``maximum``."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0

    def delay(self, attempt: int, jitter: bool) -> float:
        base = min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)
        return base * random.uniform(0.5, 1.0) if jitter else base


def exponential(initial: float = 1.0, maximum: float = 300.0, factor: float = 2.0) -> Backoff:
    """An exponential backoff (seconds)."""
    return Backoff(initial, maximum, factor)


@dataclass(frozen=True)
class Retry:
    """How a failing job is retried.

    Attributes:
        max_attempts: runs in all (1 = no retry); after the last failure the job
            is dead-lettered with its error history.
        backoff: delay before each retry.
        jitter: spread retries (50-100 % of the delay) so failures do not align.
        retry_on: exception types that are retried (default: any Exception).
        give_up_on: exception types that dead-letter at once.
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ClusterError("Retry.max_attempts must be >= 1", reason=Reason.INVALID_ARGUMENT)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, self.give_up_on) or not isinstance(exc, self.retry_on):
            return False
        return attempt < self.max_attempts


@dataclass(frozen=True)
class JobSpec:
    """A declared job."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    payload_type: Any
    retry: Retry
    timeout: float | None
    priority: int
    concurrency: int


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands.

    Attributes:
        state: queued | scheduled | running | succeeded | failed (waiting to retry)
            | cancelled | dead.
        attempts: runs started so far (failures so far, plus the one running or
            finished).
        last_error: the last failure (``"Type: message"``), if any.
        errors: the error history of a dead job.
        result: the handler's return value (plain data) once succeeded.
        progress: the last ``job.progress()`` of a running job (0.0-1.0).
        heartbeat_at: when the job last reported progress or ``keep_alive()``.
    """

    id: int
    name: str
    state: JobState
    attempts: int
    last_error: str | None
    created_at: float
    finished_at: float | None
    scheduled_for: float | None = None
    errors: tuple[str, ...] = ()
    result: Any = None
    progress: float | None = None
    progress_note: str | None = None
    heartbeat_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL
