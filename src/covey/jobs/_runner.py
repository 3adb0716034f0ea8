"""JobRunner: runs the jobs a runner owns, with retries, timeouts and cancel.

A job arrives as a persisted envelope to ``covey.Job`` (pushed by the submitter,
or read from storage). The runner waits for a slot of the job's name (a
priority-ordered semaphore per runner and name), runs the handler with the job's
timeout, and answers the Messenger with:

- a ``Reply`` (succeeded; or dead / cancelled as an error reply), which the
  Messenger stores with the fenced completion write;
- a :class:`Reschedule` (the attempt failed, another is allowed), which the
  Messenger stores with ``reschedule`` — same message, later ``deliver_at``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from covey.core import (
    REQUEST_HEADER,
    TENANT_HEADER,
    Clock,
    ClusterError,
    ClusterPlacement,
    EntityError,
    MsgpackCodec,
    Reason,
    RequestContext,
    ShardId,
    metrics,
    use_context,
)
from covey.core.runtime import TaskSet, being_cancelled, consumer_span, traced_context
from covey.jobs._definition import JobSpec, RetryLater
from covey.sharding.runtime import Envelope, Reschedule, StartRecords
from covey.storage import Message, Reply, UnitOfWork

if TYPE_CHECKING:  # _host imports _jobs, which imports this module
    from covey.jobs._host import JobHost

log = logging.getLogger("covey.jobs")

CANCEL_TAG = "__cancel__"
RUNNING_TAG = "__running__"
RETRY_TAG = "__retry__"
CONTROL_TAGS = frozenset({CANCEL_TAG, RUNNING_TAG, RETRY_TAG})


@dataclass(frozen=True)
class JobContext:
    """What a job handler gets besides its payload.

    Attributes:
        job_id: the job's id (stable across attempts).
        name: the job's name.
        attempt: 1 on the first run, +1 per retry or re-run after a runner died.
        max_attempts: the retry policy's limit.
        context: the tenant / request context the job was submitted under.
    """

    job_id: int
    name: str
    attempt: int
    max_attempts: int
    context: RequestContext
    _report: Callable[[int, float | None, str | None], Awaitable[None]] | None = None

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    async def progress(self, fraction: float, note: str | None = None) -> None:
        """Report progress (0.0-1.0) of a long job; ``status()`` shows it."""
        if not 0.0 <= fraction <= 1.0:
            raise ClusterError("progress is a fraction from 0.0 to 1.0",
                               reason=Reason.INVALID_ARGUMENT)
        if self._report is not None:
            await self._report(self.job_id, fraction, note)

    async def keep_alive(self) -> None:
        """Tell watchers a long job is still working (``status().heartbeat_at``)."""
        if self._report is not None:
            await self._report(self.job_id, None, None)


class PrioritySemaphore:
    """A semaphore whose waiters get slots highest priority first, then FIFO."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())


class JobRunner:
    """The deliverer of ``covey.Job`` envelopes on one runner.

    Args:
        clock: time source.
        runner_id: this runner's address (the jobs' request context shows it).
        host: where completions, re-runs, start records and progress go.
        tasks: the runner's task set for this component: every job run and the
            start-recording writes live in it.
        grace: seconds a graceful shard stop waits for running jobs.
    """

    def __init__(self, clock: Clock, runner_id: str | None, host: JobHost, *,
                 tasks: TaskSet, grace: float = 15.0) -> None:
        self._clock = clock
        self._runner_id = runner_id
        self._host = host
        self._tasks = tasks
        self._codec = MsgpackCodec()
        self.specs: dict[str, JobSpec] = {}
        self._slots: dict[str, PrioritySemaphore] = {}
        self.running: dict[int, asyncio.Task[Any]] = {}
        self._cancel_requested: set[int] = set()
        self.cancelled: set[int] = set()
        self._shard_of: dict[int, ShardId] = {}
        self.grace = grace
        self._reported: set[int] = set()
        self._starts = StartRecords(self._host.mark_started, tasks, "job")

    def add(self, spec: JobSpec) -> None:
        if spec.name in self.specs:
            raise ClusterError(f"job {spec.name!r} is declared twice",
                               reason=Reason.INVALID_ARGUMENT)
        self.specs[spec.name] = spec
        self._slots[spec.name] = PrioritySemaphore(spec.concurrency)

    # ---- control (volatile) ----------------------------------------------

    async def control(self, envelope: Envelope) -> Reply:
        """Volatile requests about a job of this runner: is it running? cancel it."""
        message = envelope.message
        target: int = self._codec.decode(message.payload, int)
        if message.tag == CANCEL_TAG:
            task = self.running.get(target)
            self.cancelled.add(target)
            if task is not None:
                self._cancel_requested.add(target)
                task.cancel()
            else:  # queued or scheduled: it never runs
                await self._host.complete(
                    message.address.shard,
                    self._final(target, "cancelled", "cancelled before it ran"))
            return Reply(message.id, self._codec.encode(task is not None))
        if message.tag == RETRY_TAG:
            self.cancelled.discard(target)
            await self._host.rerun(target)
            return Reply(message.id, self._codec.encode(True))
        return Reply(message.id, self._codec.encode(target in self.running))

    async def _report(self, job_id: int, fraction: float | None, note: str | None) -> None:
        self._reported.add(job_id)
        await self._host.report(job_id, fraction, note)

    def _started(self, job_id: int) -> None:
        self._starts.started(job_id)

    async def close(self) -> None:
        """Finish recording job starts (5 s at most), then cancel what is left."""
        await self._starts.flush()
        await self._tasks.close()

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Let running jobs of ``shards`` finish (within the grace), then cancel them.

        A cancelled run stores nothing: the next owner runs the job again.
        """
        tasks = [t for i, t in self.running.items() if self._shard_of.get(i) in shards]
        if tasks and graceful:
            await asyncio.wait(tasks, timeout=self.grace)
        for task in tasks:
            task.cancel()

    # ---- delivery --------------------------------------------------------

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None) -> Reply | Reschedule:
        # ``unit``: jobs stage nothing on it (yet); their reply is stored the plain way
        message = envelope.message
        if message.tag in CONTROL_TAGS:
            return await self.control(envelope)
        if message.id in self.cancelled:
            return self._final(message.id, "cancelled", "cancelled before it ran")
        spec = self.specs.get(message.tag)
        if spec is None:
            return self._final(message.id, "dead", f"no job named {message.tag!r} is declared")
        try:
            payload = self._codec.decode(message.payload, spec.payload_type)
        except ClusterError as exc:
            metrics.JOBS_DEAD.labels(spec.name).inc()
            return self._final(message.id, "dead", f"SerializationError: {exc}")
        slots = self._slots[spec.name]
        queued = metrics.JOBS_QUEUED.labels(spec.name, str(message.priority))
        queued.inc()
        try:
            await slots.acquire(message.priority)
        finally:
            queued.dec()
        try:
            if message.id in self.cancelled:
                return self._final(message.id, "cancelled", "cancelled before it ran")
            return await self._traced_run(spec, envelope, payload)
        finally:
            slots.release()

    async def _traced_run(self, spec: JobSpec, envelope: Envelope,
                          payload: Any) -> Reply | Reschedule:
        """:meth:`_run` inside its ``run job`` span: a new trace per attempt, linked to
        the span that submitted the job (docs/tracing.md)."""
        message = envelope.message
        with consumer_span(f"run job {spec.name}", message.headers, link=True,
                           attributes=lambda: self._run_attributes(spec, message)) as span:
            outcome = await self._run(spec, envelope, payload)
            if isinstance(outcome, Reschedule):
                span.fail(f"attempt failed, retried: {outcome.error}")
            elif outcome.is_error:
                span.fail("the job is dead: its last attempt failed")
            return outcome

    def _run_attributes(self, spec: JobSpec, message: Message) -> dict[str, str | int | None]:
        return {
            "messaging.system": "covey",
            "messaging.operation.type": "process",
            "messaging.destination.name": spec.name,
            "messaging.message.id": str(message.id),
            "covey.job.name": spec.name,
            "covey.job.id": str(message.id),
            "covey.job.attempt": max(message.starts, message.failures) + 1,
            "covey.shard": str(message.address.shard),
            "covey.runner": self._runner_id,
            "covey.tenant": message.headers.get(TENANT_HEADER),
            "covey.request_id": message.headers.get(REQUEST_HEADER),
        }

    async def _run(self, spec: JobSpec, envelope: Envelope, payload: Any) -> Reply | Reschedule:
        message = envelope.message
        # runs begun so far, this one included: every start is recorded, so a re-run
        # after its runner died counts as an attempt (failures cover retries whose
        # start record had not landed yet)
        attempt = max(message.starts, message.failures) + 1
        if self._tasks.closed:  # the runner is stopping: the job stays stored for the next
            raise EntityError("the job runner is stopping", reason=Reason.SHUTTING_DOWN)
        self._started(message.id)
        context = traced_context(RequestContext.from_headers(message.headers, ClusterPlacement(
            runner_id=self._runner_id, shard_id=str(message.address.shard),
            entity=f"{message.address.entity_type}/{message.address.entity_id}")))
        job = JobContext(message.id, spec.name, attempt, spec.retry.max_attempts, context,
                         self._report)
        with use_context(context):  # the task copies the context as it is created
            task = self._tasks.spawn(_outcome(spec.fn(job, payload)))
        self.running[message.id] = task
        self._shard_of[message.id] = message.address.shard
        metrics.JOBS_RUNNING.labels(spec.name).inc()
        started = self._clock.monotonic()
        try:
            result = await asyncio.wait_for(asyncio.shield(task), spec.timeout)
        except asyncio.CancelledError:
            if message.id in self._cancel_requested and not being_cancelled():
                log.info("job %s %d cancelled while running", spec.name, message.id)
                return self._final(message.id, "cancelled", "cancelled while running",
                                   attempt=attempt)
            task.cancel()  # the runner is stopping or the shard moved: run it elsewhere
            raise
        except TimeoutError:  # the handler's own TimeoutError comes back as a _Failure
            task.cancel()
            return self._failed(spec, message, attempt,
                                TimeoutError(f"timed out after {spec.timeout} s"))
        finally:
            self.running.pop(message.id, None)
            self._shard_of.pop(message.id, None)
            self._cancel_requested.discard(message.id)
            metrics.JOBS_RUNNING.labels(spec.name).dec()
            metrics.JOB_SECONDS.labels(spec.name).observe(self._clock.monotonic() - started)
        if isinstance(result, _Failure):
            return self._failed(spec, message, attempt, result.error)
        if message.id in self._reported:
            self._reported.discard(message.id)
            try:
                await self._host.forget(message.id)  # progress of a finished job is noise
            except ClusterError as exc:
                log.warning("could not drop the progress of job %d: %s", message.id, exc)
        try:
            # the attempt travels with the outcome: status() must not depend on the
            # start record, which may land after the reply
            encoded = self._codec.encode({"result": result, "attempt": attempt})
        except ClusterError as exc:
            return self._failed(spec, message, attempt, exc)
        metrics.JOBS_SUCCEEDED.labels(spec.name).inc()
        return Reply(message.id, encoded)

    def _failed(self, spec: JobSpec, message: Message, attempt: int,
                exc: BaseException) -> Reply | Reschedule:
        error = f"{type(exc).__name__}: {exc}"
        history = [*error_history(message.last_error), error]
        metrics.JOBS_FAILED.labels(spec.name).inc()
        delay: float | None = None
        if isinstance(exc, RetryLater) and attempt < spec.retry.max_attempts:
            delay = exc.delay  # the handler knows better (a receiver's Retry-After)
        elif spec.retry.should_retry(exc, attempt):
            delay = spec.retry.backoff.delay(attempt, spec.retry.jitter)
        if delay is not None:
            log.info("job %s %d attempt %d failed (%s); retry in %.2f s",
                     spec.name, message.id, attempt, error, delay)
            # the stored last_error carries the whole history to the next attempt
            return Reschedule(self._clock.now() + delay, json.dumps(history))
        log.warning("job %s %d dead after attempt %d: %s", spec.name, message.id, attempt, error)
        metrics.JOBS_DEAD.labels(spec.name).inc()
        return self._final(message.id, "dead", error, attempt=attempt, errors=history)

    def _final(self, job_id: int, state: str, error: str, *, attempt: int = 0,
               errors: list[str] | None = None) -> Reply:
        payload = self._codec.encode({
            "state": state, "error": error, "attempt": attempt, "errors": errors or [error],
            "reason": Reason.HANDLER_FAILED.value,
        })
        # only dead jobs are error replies: the dead-letter is exactly the error replies
        return Reply(job_id, payload, is_error=state == "dead")


class _Failure:
    """A handler's exception, carried out of its task as a result."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


async def _outcome(run: Awaitable[Any]) -> Any:
    """The handler's result, or its exception as a :class:`_Failure`.

    A job that fails is the job's outcome, not a crash of the runner: the task
    set that owns the run must only ever see it end or be cancelled.
    """
    try:
        return await run
    except Exception as exc:
        return _Failure(exc)


def error_history(stored: str | None) -> list[str]:
    """The error history a rescheduled job carries in its ``last_error``."""
    if not stored:
        return []
    try:
        value = json.loads(stored)
    except ValueError:
        return [stored]
    return [str(e) for e in value] if isinstance(value, list) else [str(value)]


