"""Submitting jobs and asking about them: ``JobDefinition.submit`` and ``Jobs``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from covey.core import (
    Clock,
    ClusterError,
    EntityAddress,
    JobError,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
    current_context,
    shard_for,
    to_plain,
    validate,
)
from covey.jobs._definition import (
    JOB_ENTITY,
    TERMINAL,
    JobSpec,
    JobState,
    JobStatus,
    PriorityName,
    priority_value,
)
from covey.jobs._runner import CANCEL_TAG, RETRY_TAG, RUNNING_TAG, error_history
from covey.sharding import Envelope, Messenger
from covey.storage import Duplicate, Message, MessageRecord, Storage

P = TypeVar("P")


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id, and shortcuts to :class:`Jobs`."""

    id: int
    name: str
    jobs: Jobs
    duplicate: bool = False

    async def status(self) -> JobStatus:
        return await self.jobs.status(self.id)

    async def result(self, timeout: float = 30.0) -> Any:
        return await self.jobs.result(self.id, timeout=timeout)

    async def cancel(self) -> JobStatus:
        return await self.jobs.cancel(self.id)


class Jobs:
    """Status, results, cancel and the dead-letter (``cluster.jobs``)."""

    def __init__(self, storage: Storage, messenger: Messenger, snowflake: SnowflakeGenerator,
                 clock: Clock, shards: int) -> None:
        self._storage = storage
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self._codec = MsgpackCodec()

    # ---- submitting ------------------------------------------------------

    def message(self, spec: JobSpec, payload: Any, *, dedupe_key: str | None,
                delay: float | None, priority: PriorityName | int | None) -> Message:
        declared = spec.payload_type
        if not (isinstance(declared, type) and isinstance(payload, declared)):
            payload = validate(to_plain(payload), declared)  # typed error naming the field
        job_id = self._snowflake.next_id()
        entity_id = f"{spec.name}:{dedupe_key}" if dedupe_key is not None else str(job_id)
        return Message(
            id=job_id,
            address=EntityAddress(JOB_ENTITY, entity_id, shard_for(entity_id, self._shards)),
            tag=spec.name,
            payload=self._codec.encode(payload),
            headers=current_context().to_headers(),
            primary_key="job" if dedupe_key is not None else None,
            deliver_at=None if not delay else self._clock.now() + float(delay),
            priority=spec.priority if priority is None else priority_value(priority),
        )

    async def submit(self, spec: JobSpec, messages: Sequence[Message],
                     transaction: Any = None) -> list[JobHandle]:
        if transaction is not None:
            for m in messages:
                await self._messenger.call(Envelope(m, persisted=True), timeout=30,
                                           discard=True, transaction=transaction)
            return [JobHandle(m.id, spec.name, self) for m in messages]
        results = await self._storage.messages.save_requests(messages)
        handles: list[JobHandle] = []
        wake: list[Envelope] = []
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, Duplicate):
                handles.append(JobHandle(result.original_id, spec.name, self, duplicate=True))
                continue
            handles.append(JobHandle(message.id, spec.name, self))
            wake.append(Envelope(message, persisted=True))
        if wake:
            await self._messenger.push_many(wake)
        return handles

    # ---- asking ----------------------------------------------------------

    async def _record(self, job_id: int) -> MessageRecord:
        record = (await self._storage.messages.inspect([job_id])).get(job_id)
        if record is None or record.message.address.entity_type != JOB_ENTITY:
            raise JobError(f"no job with id {job_id}", reason=Reason.JOB_NOT_FOUND,
                           job_id=job_id)
        return record

    async def status(self, job_id: int) -> JobStatus:
        """Where the job stands now."""
        return await self._status(await self._record(job_id))

    async def _status(self, record: MessageRecord) -> JobStatus:
        m = record.message
        state: JobState
        result: Any = None
        errors: tuple[str, ...] = ()
        history = error_history(record.last_error)
        last_error = history[-1] if history else None
        errors = tuple(history)
        # runs started (a start is recorded just after it happens, so a run that has
        # just begun may not be counted yet; the owner is asked then)
        attempts = max(m.starts, m.failures)
        now = self._clock.now()
        if record.reply is not None:
            outcome: dict[str, Any] = self._codec.decode(record.reply.payload, dict[str, Any])
            attempts = int(outcome.get("attempt") or 0)
            if record.reply.is_error:
                state = "dead"
                errors = tuple(str(e) for e in outcome.get("errors") or [outcome.get("error")])
                last_error = errors[-1] if errors else None
            elif outcome.get("state") == "cancelled":
                state = "cancelled"
            else:
                state = "succeeded"
                result = outcome.get("result")
        elif m.deliver_at is not None and m.deliver_at > now:
            state = "failed" if m.failures else "scheduled"
        elif await self._running(record):
            state, attempts = "running", max(attempts, m.failures + 1)
        else:
            state = "queued"
        progress = note = beat = None
        if state in ("running", "queued", "failed"):
            stored = await self._storage.state.get(progress_key(m.id))
            if stored is not None:
                info2: dict[str, Any] = self._codec.decode(stored.value, dict[str, Any])
                progress, note, beat = info2.get("p"), info2.get("n"), info2.get("t")
        return JobStatus(m.id, m.tag, state, attempts, last_error, record.created_at,
                         record.processed_at, m.deliver_at, errors, result, progress, note, beat)

    async def report(self, job_id: int, fraction: float | None, note: str | None) -> None:
        """Store a running job's progress / heartbeat (last write wins)."""
        key = progress_key(job_id)
        for _ in range(3):
            current = await self._storage.state.get(key)
            data: dict[str, Any] = {} if current is None else self._codec.decode(
                current.value, dict[str, Any])
            if fraction is not None:
                data["p"], data["n"] = fraction, note
            data["t"] = self._clock.now()
            try:
                await self._storage.state.set(
                    key, self._codec.encode(data),
                    expected_version=None if current is None else current.version)
                return
            except ClusterError as exc:
                if exc.reason is not Reason.VERSION_CONFLICT:
                    raise

    async def _control(self, record: MessageRecord, tag: str, *, timeout: float = 5.0) -> Any:
        if not self._messenger.has_owner(record.message.address.shard):
            raise JobError("no runner is up to act on this job (start one with covey run)",
                           reason=Reason.PEER_UNAVAILABLE, job_id=record.message.id)
        probe = Message(id=self._snowflake.next_id(), address=record.message.address, tag=tag,
                        payload=self._codec.encode(record.message.id))
        reply = await self._messenger.call(Envelope(probe, persisted=False), timeout=timeout,
                                           discard=False)
        return None if reply is None else self._codec.decode(reply.payload, Any)

    async def _running(self, record: MessageRecord) -> bool:
        if not self._messenger.has_owner(record.message.address.shard):
            return False  # no runner is up: nothing can be running
        try:
            return bool(await self._control(record, RUNNING_TAG, timeout=1.0))
        except ClusterError:
            return False

    async def result(self, job_id: int, *, timeout: float = 30.0) -> Any:
        """Wait for the job's outcome; its handler's return value.

        Raises:
            JobError: ``job_dead`` (``details["error"]``), ``job_cancelled``, or
                ``job_not_found``; EntityError ``timeout`` when it is not done in time.
        """
        record = await self._record(job_id)
        reply = record.reply
        if reply is None:
            reply = await self._messenger.wait_for_reply(
                Envelope(record.message, persisted=True), timeout=timeout)
        outcome: dict[str, Any] = self._codec.decode(reply.payload, dict[str, Any])
        if reply.is_error or outcome.get("state") == "cancelled":
            cancelled = not reply.is_error
            raise JobError(
                f"job {job_id} {'was cancelled' if cancelled else 'is dead'}: "
                f"{outcome.get('error')}",
                reason=Reason.JOB_CANCELLED if cancelled else Reason.JOB_DEAD,
                job_id=job_id, error=str(outcome.get("error")))
        return outcome.get("result")

    async def cancel(self, job_id: int, *, timeout: float = 10.0) -> JobStatus:
        """Cancel a job: a queued one never runs, a running one is interrupted.

        Returns the final status (``cancelled``, or what it reached first).
        """
        record = await self._record(job_id)
        if record.reply is None:
            await self._control(record, CANCEL_TAG)
        deadline = self._clock.monotonic() + timeout
        while True:
            status = await self.status(job_id)
            if status.state in TERMINAL or self._clock.monotonic() > deadline:
                return status
            await asyncio.sleep(0.01)

    # ---- operating -------------------------------------------------------

    async def recent(self, *, state: str | None = None, name: str | None = None,
                   limit: int = 50) -> list[JobStatus]:
        """Recent jobs, newest first (``state``: unprocessed, processed or error)."""
        records = await self._storage.messages.list_messages(
            JOB_ENTITY, state=state, tag=name, limit=limit)  # type: ignore[arg-type]
        return [await self._status(r) for r in records]

    async def dead_letters(self, *, name: str | None = None, limit: int = 50) -> list[JobStatus]:
        """Dead jobs, newest first."""
        return await self.recent(state="error", name=name, limit=limit)

    async def retry_dead(self, job_id: int) -> JobHandle:
        """Requeue a dead job with its attempts reset."""
        status = await self.status(job_id)
        if status.state != "dead":
            raise JobError(f"job {job_id} is {status.state}, not dead",
                           reason=Reason.INVALID_ARGUMENT, job_id=job_id)
        await self._control(await self._record(job_id), RETRY_TAG)  # the owner resets it
        return JobHandle(job_id, status.name, self)

    async def purge_dead(self, *, name: str | None = None) -> int:
        """Delete every dead job (of ``name``); returns how many."""
        total = 0
        while True:
            dead = await self.dead_letters(name=name, limit=500)
            if not dead:
                return total
            total += await self._storage.messages.delete([s.id for s in dead])


def progress_key(job_id: int) -> str:
    """Where a job's progress and heartbeat live in the state store."""
    return f"covey.job-progress/{job_id}"


class JobDefinition(Generic[P]):
    """What ``@cluster.job`` returns: the handler, plus ``submit``."""

    def __init__(self, spec: JobSpec, jobs: Any) -> None:
        self.spec = spec
        self._jobs = jobs  # a callable returning the started cluster's Jobs

    @property
    def name(self) -> str:
        return self.spec.name

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (tests)."""
        return await self.spec.fn(*args, **kwargs)

    @overload
    async def submit(  # type: ignore[overload-overlap]
                     self, payload: Sequence[P], *, dedupe_key: None = None,
                     delay: float | None = None, priority: PriorityName | int | None = None,
                     conn: Any = None) -> list[JobHandle]: ...
    @overload
    async def submit(self, payload: P, *, dedupe_key: str | None = None,
                     delay: float | None = None, priority: PriorityName | int | None = None,
                     conn: Any = None) -> JobHandle: ...
    async def submit(self, payload: Any, *, dedupe_key: str | None = None,
                     delay: float | None = None, priority: PriorityName | int | None = None,
                     conn: Any = None) -> JobHandle | list[JobHandle]:
        """Enqueue one job (or a list, in one round trip); returns handle(s).

        Args:
            dedupe_key: a second submit with the same key returns the first job's
                handle (``handle.duplicate``) and enqueues nothing.
            delay: seconds before the job may start.
            priority: ``high``/``normal``/``low`` or an int; orders a backlog.
            conn: an asyncpg connection in the application's transaction: the
                jobs exist only if it commits (PostgreSQL).
        """
        jobs: Jobs = self._jobs()
        batch = isinstance(payload, list | tuple)
        if batch and dedupe_key is not None:
            raise ClusterError("dedupe_key applies to one job, not a batch",
                               reason=Reason.INVALID_ARGUMENT)
        items = list(payload) if batch else [payload]
        messages = [jobs.message(self.spec, p, dedupe_key=dedupe_key, delay=delay,
                                 priority=priority) for p in items]
        handles = await jobs.submit(self.spec, messages, transaction=conn)
        return handles if batch else handles[0]
