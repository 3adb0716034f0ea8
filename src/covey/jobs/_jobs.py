"""Submitting jobs and asking about them: ``JobDefinition.submit`` and ``Jobs``."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from covey.core import (
    TENANT_HEADER,
    Clock,
    ClusterError,
    EntityAddress,
    JobError,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
    current_context,
)
from covey.core.runtime import check_seconds, inject_trace, shard_for, validate_value
from covey.entities.runtime import EffectScope
from covey.jobs._definition import (
    JOB_ENTITY,
    TERMINAL,
    JobSpec,
    JobState,
    JobStatus,
    PriorityName,
    check_dedupe_key,
    check_job_id,
    check_job_name,
    check_tenant,
    invalid,
    priority_value,
)
from covey.jobs._runner import CANCEL_TAG, RETRY_TAG, RUNNING_TAG, error_history
from covey.sharding.runtime import Envelope, Messenger
from covey.storage import (
    Duplicate,
    Message,
    MessageRecord,
    SaveResult,
    Storage,
    TransactionalMessages,
)


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


Delay = float | dt.timedelta


class Jobs:
    """Submit by name, status, results, cancel and the dead-letter (``cluster.jobs``).

    Args:
        specs: the jobs declared in this process, by name: submits by name
            validate their payloads against these.
    """

    def __init__(self, storage: Storage, messenger: Messenger, snowflake: SnowflakeGenerator,
                 clock: Clock, shards: int, specs: Mapping[str, JobSpec] | None = None) -> None:
        self._storage = storage
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self._specs: Mapping[str, JobSpec] = specs if specs is not None else {}
        self._codec = MsgpackCodec()
        self._owners: dict[str, DeadLetterOwner] = {}

    def own_dead_letters(self, name: str, owner: DeadLetterOwner) -> None:
        """Hand the dead-letter of job ``name`` to ``owner`` (covey's own jobs:
        webhook deliveries keep a record of their attempts beside the job, which a
        plain requeue or delete would lose or leave behind)."""
        self._owners[name] = owner

    # ---- submitting ------------------------------------------------------

    def message(self, job: JobSpec | str, payload: Any, *, dedupe_key: str | None,
                delay: Delay | None, priority: PriorityName | int | None) -> Message:
        """The stored form of one job; every argument is checked first (typed errors).

        ``job`` is a declared job, or a job name: a name declared in this process
        is validated against its payload model, any other is sent as plain data
        (the runner that declares it validates it and dead-letters a misfit).
        """
        spec = job if isinstance(job, JobSpec) else self._specs.get(check_job_name(job))
        name = job.name if isinstance(job, JobSpec) else job
        dedupe_key = check_dedupe_key(dedupe_key)
        seconds = None if delay is None else check_seconds("delay", delay)
        stored_priority = priority_value(priority) if priority is not None else (
            spec.priority if spec is not None else 0)
        # validated even when it is an instance of the model (model_construct(),
        # changed since); plain data for an undeclared name. Typed errors.
        payload = validate_value(payload, Any if spec is None else spec.payload_type)
        job_id = self._snowflake.next_id()
        entity_id = f"{name}:{dedupe_key}" if dedupe_key is not None else str(job_id)
        return self._messenger.checked(Message(  # the size limit of every message
            id=job_id,
            address=EntityAddress(JOB_ENTITY, entity_id, shard_for(entity_id, self._shards)),
            tag=name,
            payload=self._codec.encode(payload),
            # the submitting span: each run of the job links to it
            headers=inject_trace(current_context().to_headers()),
            primary_key="job" if dedupe_key is not None else None,
            deliver_at=None if not seconds else self._clock.now() + seconds,
            priority=stored_priority,
        ))

    @overload
    async def submit(self, name: str, payload: list[Any] | tuple[Any, ...], *,
                     dedupe_key: None = None, delay: Delay | None = None,
                     priority: PriorityName | int | None = None,
                     transaction: Any = None) -> list[JobHandle]: ...
    @overload
    async def submit(self, name: str, payload: Any, *, dedupe_key: str | None = None,
                     delay: Delay | None = None, priority: PriorityName | int | None = None,
                     transaction: Any = None) -> JobHandle: ...
    async def submit(self, name: str, payload: Any, *, dedupe_key: str | None = None,
                     delay: Delay | None = None, priority: PriorityName | int | None = None,
                     transaction: Any = None) -> JobHandle | list[JobHandle]:
        """Enqueue job(s) by name, from a process that need not declare the job.

        Takes the arguments of :meth:`JobDefinition.submit`. When ``name`` is
        declared in this process the payload is validated against its model;
        otherwise it is sent as plain data (pydantic models are converted) and the
        runner that declares the job validates it (a misfit is dead-lettered).

        Raises:
            ClusterError: ``invalid_argument`` naming the argument
                (``details["field"]``: ``name``, ``delay``, ``priority``,
                ``dedupe_key``, ``transaction``); SerializationError for a payload
                that does not fit its declared model or cannot be plain data.
                Nothing is stored then.
        """
        return await self.submit_job(name, payload, dedupe_key=dedupe_key, delay=delay,
                                     priority=priority, transaction=transaction)

    async def submit_job(self, job: JobSpec | str, payload: Any, *, dedupe_key: str | None,
                         delay: Delay | None, priority: PriorityName | int | None,
                         transaction: Any) -> JobHandle | list[JobHandle]:
        """One job, or a list of them (``payload`` a list or tuple) in one round trip."""
        batch = isinstance(payload, list | tuple)
        if batch and dedupe_key is not None:
            raise invalid("dedupe_key", "a dedupe key applies to one job, not a batch")
        items = list(payload) if batch else [payload]
        messages = [self.message(job, p, dedupe_key=dedupe_key, delay=delay, priority=priority)
                    for p in items]
        handles = await self.enqueue(messages, transaction=transaction)
        return handles if batch else handles[0]

    async def enqueue(self, messages: Sequence[Message], transaction: Any = None, *,
                      coalesce: bool = False) -> list[JobHandle]:
        """Store job messages and push them to their owners; a handle per message.

        A job whose dedupe key is taken gives the first job's handle
        (``duplicate=True``), also inside the application's ``transaction``.
        With ``transaction`` a persisted run's context (an entity handler's
        ``self.ctx``, an event handler's ``ctx``) the jobs are stored with the handler's commit
        (a taken dedupe key is found only then: the handle has the new id).
        ``coalesce``: wake the owners on the loop's next turn, in one frame per
        owner with the other coalesced pushes of this turn (bursts of single
        submits whose caller asks the owner nothing right after).
        """
        if not messages:
            return []
        if isinstance(transaction, EffectScope):
            # inside a persisted run (an entity handler's self.ctx, an event handler's
            # ctx): stored with its commit, never if it fails; the owners are woken
            # after the commit
            transaction.effect_unit("transaction").send(messages)
            return [JobHandle(m.id, m.tag, self) for m in messages]
        if transaction is not None:
            store = self._storage.messages
            if not isinstance(store, TransactionalMessages):
                raise invalid("transaction", "submitting inside the application's transaction "
                              f"needs PostgreSQL (this cluster uses {self._storage.backend})")
            # the owners are woken at commit (NOTIFY): nothing to push now
            return self._handles(messages, await store.save_requests_in(transaction, messages))
        results = await self._storage.messages.save_requests(messages)
        handles = self._handles(messages, results)
        wake = [Envelope(m, persisted=True) for m, h in zip(messages, handles, strict=True)
                if not h.duplicate]
        if wake and coalesce:
            self._messenger.push_soon(wake)
        elif wake:
            await self._messenger.push_many(wake)
        return handles

    def _handles(self, messages: Sequence[Message],
                 results: Sequence[SaveResult]) -> list[JobHandle]:
        return [JobHandle(r.original_id, m.tag, self, duplicate=True) if isinstance(r, Duplicate)
                else JobHandle(m.id, m.tag, self)
                for m, r in zip(messages, results, strict=True)]

    # ---- asking ----------------------------------------------------------

    async def _record(self, job_id: int, tenant: str | None = None) -> MessageRecord:
        job_id = check_job_id(job_id)
        tenant = check_tenant(tenant)
        record = (await self._storage.messages.inspect([job_id])).get(job_id)
        if record is None or record.message.address.entity_type != JOB_ENTITY or (
                tenant is not None and record.message.headers.get(TENANT_HEADER) != tenant):
            # another tenant's job is "not found": the answer must not reveal it exists
            raise JobError(f"no job with id {job_id}", reason=Reason.JOB_NOT_FOUND,
                           job_id=job_id)
        return record

    async def status(self, job_id: int, *, tenant: str | None = None) -> JobStatus:
        """Where the job stands now.

        Args:
            tenant: act for this tenant only: another tenant's job (or one
                submitted without a tenant) is ``job_not_found``.
        """
        return await self._status(await self._record(job_id, tenant))

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
                         record.processed_at, m.deliver_at, errors, result, progress, note, beat,
                         tenant=m.headers.get(TENANT_HEADER))

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

    async def result(self, job_id: int, *, timeout: float = 30.0,
                     tenant: str | None = None) -> Any:
        """Wait for the job's outcome; its handler's return value.

        Args:
            tenant: act for this tenant only (see :meth:`status`).

        Raises:
            JobError: ``job_dead`` (``details["error"]``), ``job_cancelled``, or
                ``job_not_found``; EntityError ``timeout`` when it is not done in time.
        """
        timeout = check_seconds("timeout", timeout)
        record = await self._record(job_id, tenant)
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

    async def cancel(self, job_id: int, *, timeout: float = 10.0,
                     tenant: str | None = None) -> JobStatus:
        """Cancel a job: a queued one never runs, a running one is interrupted.

        Returns the final status (``cancelled``, or what it reached first).

        Args:
            tenant: act for this tenant only (see :meth:`status`): another
                tenant's job is ``job_not_found`` and is left alone.
        """
        timeout = check_seconds("timeout", timeout)
        record = await self._record(job_id, tenant)
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
                     limit: int = 50, before_id: int | None = None) -> list[JobStatus]:
        """Recent jobs, newest first (``state``: unprocessed, processed or error).

        ``before_id``: only jobs older than this one (the next page).
        """
        records = await self._storage.messages.list_messages(
            JOB_ENTITY, state=state, tag=name, limit=limit,  # type: ignore[arg-type]
            before_id=before_id)
        return [await self._status(r) for r in records]

    async def dead_letters(self, *, name: str | None = None, limit: int = 50) -> list[JobStatus]:
        """Dead jobs, newest first."""
        return await self.recent(state="error", name=name, limit=limit)

    async def retry_dead(self, job_id: int) -> JobHandle:
        """Requeue a dead job with its attempts reset.

        A webhook delivery (job ``covey.webhook``) is replayed through
        ``cluster.webhooks.replay``, which keeps the record of its earlier attempts.
        """
        status = await self.status(job_id)
        if status.state != "dead":
            raise JobError(f"job {job_id} is {status.state}, not dead",
                           reason=Reason.INVALID_ARGUMENT, job_id=job_id)
        owner = self._owners.get(status.name)
        if owner is not None:
            await owner.retry(job_id)
        else:
            await self.requeue_dead(job_id)
        return JobHandle(job_id, status.name, self)

    async def requeue_dead(self, job_id: int) -> None:
        """What :meth:`retry_dead` does, for the owner of a job's dead-letter (no
        hand-over to the owner, no state check)."""
        await self._control(await self._record(job_id), RETRY_TAG)  # the owner resets it

    async def purge_dead(self, *, name: str | None = None) -> int:
        """Delete every dead job (of ``name``); returns how many.

        Dead webhook deliveries go through ``cluster.webhooks.purge_dead``, which
        deletes the record of their attempts with them.
        """
        total = 0
        for owned, owner in self._owners.items():
            if name in (None, owned):
                total += await owner.purge()
        if name is not None and name in self._owners:
            return total
        while True:
            dead = await self.dead_letters(name=name, limit=500)
            if not dead:
                return total
            total += await self._storage.messages.delete([s.id for s in dead])


@dataclass(frozen=True, slots=True)
class DeadLetterOwner:
    """Who retries and purges the dead-letter of one of covey's own jobs."""

    retry: Callable[[int], Awaitable[object]]
    purge: Callable[[], Awaitable[int]]


def progress_key(job_id: int) -> str:
    """Where a job's progress and heartbeat live in the state store."""
    return f"covey.job-progress/{job_id}"
