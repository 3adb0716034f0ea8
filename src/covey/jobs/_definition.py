"""What an application declares and gets back for jobs."""

from __future__ import annotations

import inspect
import random
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from covey.core import MAX_ENTITY_ID_BYTES, MAX_NAME_BYTES, ClusterError, JobError, Reason
from covey.core.runtime import check_seconds, check_text, invalid_argument

invalid = invalid_argument  # this package's name for it

JOB_ENTITY = "covey.Job"

PRIORITIES = {"high": 10, "normal": 0, "low": -10}
PriorityName = Literal["high", "normal", "low"]

JobState = Literal["queued", "scheduled", "running", "succeeded", "failed", "cancelled", "dead"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "cancelled", "dead"})


#: The ids a job (a stored message) can have: positive signed 64-bit ints.
MAX_JOB_ID = (1 << 63) - 1
#: The longest dedupe key (UTF-8 bytes): ``name:key`` is the job's entity id, and
#: a job name is at most MAX_NAME_BYTES.
MAX_DEDUPE_KEY_BYTES = MAX_ENTITY_ID_BYTES - MAX_NAME_BYTES - 1


def priority_value(priority: PriorityName | int) -> int:
    """``high``/``normal``/``low`` or an int (higher runs first) as the stored int.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "priority"``) for
            an unknown name, a non-int or an int outside -32768..32767.
    """
    if isinstance(priority, int) and not isinstance(priority, bool):
        if not -32768 <= priority <= 32767:
            raise invalid("priority", f"{priority} is out of range (-32768..32767)")
        return priority
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise invalid("priority", f"{priority!r} is not high, normal, low or an int")


def check_dedupe_key(dedupe_key: object) -> str | None:
    """``None`` or a non-empty string of at most :data:`MAX_DEDUPE_KEY_BYTES`.

    No NUL and no lone surrogates (every backend must store it as text).
    """
    if dedupe_key is None:
        return None
    return check_text("dedupe_key", dedupe_key, max_bytes=MAX_DEDUPE_KEY_BYTES)


def check_job_name(name: object) -> str:
    """A job name: a non-empty string of at most ``MAX_NAME_BYTES``, no NUL."""
    return check_text("name", name, max_bytes=MAX_NAME_BYTES)


def check_job_id(job_id: object) -> int:
    """An int; one no job can have (outside 1..2**63-1) is ``job_not_found``."""
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise invalid("job_id", f"{job_id!r} is not an int")
    if not 0 < job_id <= MAX_JOB_ID:
        # not a malformed request: just an id that names no job (as a deleted one)
        raise JobError(f"no job with id {job_id}", reason=Reason.JOB_NOT_FOUND, job_id=job_id)
    return job_id


def check_tenant(tenant: object) -> str | None:
    """``None`` (no tenant check) or the tenant a caller acts for."""
    if tenant is not None and not isinstance(tenant, str):
        raise invalid("tenant", f"{tenant!r} is not a string")
    return tenant


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


class RetryLater(Exception):
    """Raised by a job handler: this attempt failed, retry after ``delay`` seconds.

    The handler's own delay replaces the backoff (a receiver's ``Retry-After``, a
    rate limit's reset time), and ``retry_on`` does not apply; the attempt still
    counts, and after ``Retry.max_attempts`` the job is dead-lettered as usual.

    Args:
        delay: seconds before the next attempt (finite, not negative).
        message: what failed (stored in the job's error history).
    """

    def __init__(self, delay: float, message: str = "retry later") -> None:
        super().__init__(message)
        self.delay = check_seconds("delay", delay)


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


def job_spec(name: str, fn: Callable[..., Awaitable[Any]], *, retry: Retry | None,
             timeout: float | None, priority: PriorityName | int,
             concurrency: int) -> JobSpec:
    """A checked :class:`JobSpec` from what ``@cluster.job`` declares.

    Raises:
        ClusterError: ``invalid_argument`` naming the option (``details["field"]``)
            for an empty name, a timeout that is not a finite number of seconds
            > 0, a concurrency that is not an int >= 1, a retry that is not a
            :class:`Retry` or a bad priority; without a field for a handler
            that does not take ``(job, payload)``.
    """
    check_job_name(name)
    seconds = None if timeout is None else check_seconds("timeout", timeout)
    if seconds == 0:
        raise invalid("timeout", "0 would time out every run (None: no timeout)")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise invalid("concurrency", f"{concurrency!r} is not an int >= 1")
    if retry is not None and not isinstance(retry, Retry):
        raise invalid("retry", f"{retry!r} is not a covey.Retry")
    default_priority = priority_value(priority)
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise ClusterError(f"job {name!r}: the handler takes (job, payload)",
                           reason=Reason.INVALID_ARGUMENT)
    return JobSpec(name, fn, hints.get(params[1], Any), retry or Retry(), seconds,
                   default_priority, concurrency)


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
        tenant: the tenant of the request context it was submitted under
            (``covey.current_context().tenant_id``), if any.
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
    tenant: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL
