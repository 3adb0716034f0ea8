"""One run of a workflow execution on the owner of its shard.

An :class:`Execution` loads the journal, runs the workflow function from the
top (each ``ctx`` operation answers from the journal where it can), and ends in
one of two ways:

- the function **returned or failed**: compensations (on failure or cancel)
  and finalizers run, then the journal's final state and the outcome (the
  start message's reply) are committed in one unit of work fenced by the
  shard's epoch;
- it must **wait** longer than a moment (a durable sleep, a ``recv``, a child):
  the journal is written and the start message rescheduled to when the wait
  ends (a persisted timer); a signal that arrives meanwhile runs it again at
  once.

Every journal write is a compare-and-set fenced by the shard's epoch: a runner
that lost the shard (or a stale copy of the execution) writes nothing and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from covey.core import (
    AlreadyProcessed,
    Clock,
    ClusterError,
    EntityError,
    FencedOut,
    Reason,
    ShardId,
    VersionConflict,
    WorkflowError,
    metrics,
)
from covey.core.runtime import state_version, upcast, validate
from covey.jobs import Retry
from covey.sharding.runtime import Completed, Deferred
from covey.storage import Fence, Message, MessageStorage, Reply, StateStore
from covey.workflows._definition import PAYLOAD_VERSION_HEADER, Workflow
from covey.workflows._journal import (
    Entry,
    Journal,
    journal_key,
    plain,
)

log = logging.getLogger("covey.workflows")

#: a wait shorter than this is waited in process; a longer one suspends the
#: execution (journal written, start message rescheduled to the wait's end)
IN_PROCESS_WAIT = 5.0
#: a wait without a deadline is looked at again this often while suspended
RECHECK = 86400.0
#: the sequence numbers of compensations (below 0) and finalizers (below this)
FINALIZER_BASE = -(1 << 40)

TERMINAL = frozenset({"completed", "compensated", "failed", "cancelled",
                      "failed_nondeterministic"})

#: set inside the tasks ``ctx.gather`` runs steps in
IN_GATHER: contextvars.ContextVar[bool] = contextvars.ContextVar("covey_wf_gather",
                                                                default=False)


class Suspend(BaseException):
    """The body must wait until ``until`` (raised through user code: a BaseException)."""

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


class Cancelled(BaseException):
    """The execution was cancelled (its journal says so)."""


class Lost(BaseException):
    """This copy of the execution may not write any more (fenced, or stale)."""


class Restart(BaseException):
    """The journal this run assumed absent exists: read it and run again."""


class ReplayEnd(BaseException):
    """A replay (``covey.testing.replay``) reached the end of its journal."""


class ExecutionHost(Protocol):
    """What an execution needs from its runner."""

    clock: Clock
    state: StateStore
    messages: MessageStorage

    def next_id(self) -> int: ...
    async def fenced(self, shard: ShardId) -> None: ...
    def wake_sent(self, messages: list[Message]) -> None: ...
    def complete_later(self, reply: Reply, fence: Fence) -> None: ...
    def release(self, execution: Execution) -> None: ...
    def child_messages(self, execution: Execution, outcome: dict[str, Any],
                       cancelled: bool) -> list[Message]: ...
    async def start_child(self, execution: Execution, workflow: Workflow | str,
                          payload: Any, child_id: str, detached: bool) -> None: ...
    def sign(self, workflow_id: str, seq: int) -> str: ...


@dataclass
class Compensation:
    seq: int
    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    retry: Retry | None
    timeout: float | None
    transaction: bool


@dataclass
class Finalizer:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    transaction: bool


@dataclass
class Outcome:
    """How the body ended: ``state`` is completed, failed, cancelled or
    failed_nondeterministic; ``until`` is set when it must wait instead."""

    state: str
    result: Any = None
    error: BaseException | None = None
    until: float | None = None
    reason: str | None = None


class Execution:
    """One execution's run on this runner (see the module docstring)."""

    def __init__(self, host: ExecutionHost, spec: Workflow, start: Message, fence: Fence,
                 lock: asyncio.Lock, codec: Any, *, fresh: bool = False) -> None:
        self.host = host
        self.spec = spec
        self.start = start
        self.fence = fence
        self.lock = lock
        self.codec = codec
        self.workflow_id = start.address.entity_id
        self.key = journal_key(self.workflow_id)
        self.journal: Journal | None = None
        self.version: int | None = None
        self.dirty = False
        self.closed = False
        self.stopping = False
        self.news = False
        self.changed = asyncio.Event()
        self.outcome: asyncio.Future[Completed | Deferred] = (
            asyncio.get_running_loop().create_future())
        self.body_task: asyncio.Task[Any] | None = None
        # per run of the body
        self.seq = 0
        self.counters: dict[str, int] = {}
        self.compensations: list[Compensation] = []
        self.finalizers: list[Finalizer] = []
        #: a replay of a recorded journal: nothing acts, the end of the journal stops it
        self.replay_only = False
        #: started by a fresh push: no journal is read first; the first write
        #: (create-if-absent) finds out if one existed after all (then: Restart)
        self.assumed_fresh = fresh

    # ---- journal ---------------------------------------------------------

    @property
    def j(self) -> Journal:
        assert self.journal is not None
        return self.journal

    async def load(self) -> None:
        async with self.lock:  # a signal arriving meanwhile waits for the journal
            await self._load()

    async def _load(self) -> None:
        stored = None if self.assumed_fresh else await self.host.state.get(self.key)
        if stored is None:
            self.journal = Journal(self.spec.name, self.spec.version, self.start.id,
                                   self.host.clock.now())
            self.version = None
            metrics.WORKFLOWS_STARTED.labels(self.spec.name).inc()
        else:
            self.journal = Journal.decode(stored.value, self.key)
            self.version = stored.version

    async def flush(self) -> None:
        """Make what was journaled so far durable (before an effect may depend on it)."""
        if not self.dirty:
            return
        async with self.lock:
            if self.dirty:
                await self.write_locked()

    async def write_locked(self) -> None:
        """Write the journal now (the caller holds :attr:`lock`)."""
        self.dirty = False
        self.j.updated_at = self.host.clock.now()
        try:
            # a checkpoint: no wait for the database's disk flush (see docs/workflows.md);
            # an ending (outcome) is written durably
            self.version = await self.host.state.set(
                self.key, self.j.encode(), expected_version=self.version, fence=self.fence,
                sync=self.j.state in TERMINAL)
        except (FencedOut, VersionConflict) as exc:
            self.dirty = True
            await self._lost(exc)
        except BaseException:
            self.dirty = True
            raise
        self.assumed_fresh = False

    async def _lost(self, exc: BaseException) -> typing.NoReturn:
        if self.assumed_fresh and not isinstance(exc, FencedOut):
            raise Restart() from exc
        if isinstance(exc, FencedOut):
            await self.host.fenced(self.fence.shard)
        log.info("workflow %s: this runner may not write its journal any more (%s)",
                 self.workflow_id, exc)
        raise Lost() from exc

    def notify(self) -> None:
        """Something the body may wait for arrived (a signal, a cancel)."""
        self.news = True
        self.changed.set()

    # ---- sequence ----------------------------------------------------------

    def next_seq(self, name: str) -> tuple[int, str]:
        self.seq += 1
        count = self.counters[name] = self.counters.get(name, 0) + 1
        return self.seq, f"{name}#{count}"

    def replayed(self, seq: int, key: str, kind: str) -> Entry | None:
        """The journal's entry at ``seq``, checked against what the code does now."""
        entry = self.j.entries.get(seq)
        if entry is not None and (entry.key != key or entry.kind != kind):
            raise WorkflowError(
                f"workflow {self.workflow_id!r} does not fit its journal at step {seq}: the "
                f"journal has {entry.kind} {entry.key!r}, the code now does {kind} {key!r}",
                reason=Reason.NONDETERMINISM, workflow_id=self.workflow_id, seq=seq,
                expected=f"{entry.kind} {entry.key}", found=f"{kind} {key}")
        return entry

    def check_cancel(self) -> None:
        """Before an operation acts: stop a replay at the journal's end; a cancelled
        execution stops here."""
        if self.replay_only:
            raise ReplayEnd()
        if self.j.cancel:
            raise Cancelled()

    def waiting(self, reason: str | None) -> None:
        """The body waits (``reason``), or goes on (``None``): what its status shows
        from the next journal write on."""
        self.j.state, self.j.waiting_for = ("running", None) if reason is None else (
            "waiting", reason)

    def record(self, seq: int, entry: Entry) -> None:
        entry.at = self.host.clock.now()
        self.j.entries[seq] = entry
        self.dirty = True

    # ---- running -----------------------------------------------------------

    async def run(self) -> None:
        """Run until the execution ends or must wait; :attr:`outcome` says which."""
        try:
            while True:
                try:
                    answer = await self._run_to_end()
                    break
                except Restart:  # a journal existed after all: read it, run again
                    self.assumed_fresh = False
                    self.closed = False
                    self.dirty = False
            self.outcome.set_result(answer)
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, Lost | asyncio.CancelledError):
                error = EntityError(f"workflow {self.workflow_id!r} stopped on this runner",
                                    reason=Reason.NOT_OWNER)
            if not self.outcome.done():
                self.outcome.set_exception(error)
                self.outcome.exception()  # retrieved: nobody may be waiting
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not isinstance(exc, Lost | ClusterError):
                log.exception("workflow %s: its run failed", self.workflow_id)
        finally:
            self.closed = True
            self.host.release(self)

    async def _run_to_end(self) -> Completed | Deferred:
        await self.load()
        if self.j.state in TERMINAL:
            return await self._stored_outcome()
        while True:
            outcome = await self._run_body()
            if outcome.until is None:
                from covey.workflows._ending import finish

                return await finish(self, outcome)
            suspended = await self._suspend(outcome)
            if suspended is not None:
                return suspended
            # news arrived while it decided to wait: run again

    async def _stored_outcome(self) -> Completed | Deferred:
        replies = await self.host.messages.replies_for([self.start.id])
        reply = replies.get(self.start.id)
        if reply is not None:
            return Completed(reply)
        outcome = self.j.outcome
        if outcome is None:
            return Deferred()
        # a start message made after the first one was purged: it gets the same outcome
        reply = Reply(self.start.id, self.codec.encode(outcome),
                      is_error=outcome.get("state") != "completed")
        with contextlib.suppress(AlreadyProcessed):
            await self.host.messages.save_reply(reply, self.fence)
        return Completed(reply)

    async def _run_body(self) -> Outcome:
        from covey.workflows._context import WorkflowContext

        self.seq = 0
        self.counters = {}
        self.compensations = []
        self.finalizers = []
        self.news = False
        self.changed.clear()
        if self.j.state != "running" or self.j.waiting_for is not None:
            self.j.state, self.j.waiting_for = "running", None
        try:
            payload = self._payload()
        except ClusterError as exc:
            return Outcome("failed", error=exc)
        ctx = WorkflowContext(self)
        self.body_task = asyncio.get_running_loop().create_task(_body(self.spec.fn(ctx, payload)))
        try:
            result = await asyncio.shield(self.body_task)
        except asyncio.CancelledError:
            # this run loop was cancelled (the runner stops): stop the body too
            self.body_task.cancel()
            with contextlib.suppress(BaseException):
                await self.body_task
            raise
        except Suspend as wait:
            return Outcome("waiting", until=wait.until, reason=wait.reason)
        except Lost:
            raise
        except Cancelled:
            return Outcome("cancelled")
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
                if self.stopping:
                    raise Lost() from exc
                if self.j.cancel:
                    return Outcome("cancelled")
                if not isinstance(exc, Exception):
                    raise
            if isinstance(exc, WorkflowError) and exc.reason is Reason.NONDETERMINISM:
                return Outcome("failed_nondeterministic", error=exc)
            return Outcome("failed", error=exc)
        try:
            return Outcome("completed", result=plain(validate(plain(result),
                                                              self.spec.result_type)))
        except ClusterError as exc:
            return Outcome("failed", error=exc)

    def _payload(self) -> Any:
        """The start message's payload, upcast from the model version it was written
        with (older executions after a model change) and validated."""
        tp = self.spec.payload_type
        stored = int(self.start.headers.get(PAYLOAD_VERSION_HEADER, "1") or 1)
        if tp is Any or stored == state_version(tp):
            return self.codec.decode(self.start.payload, tp)
        return validate(upcast(tp, self.codec.decode(self.start.payload, Any), stored), tp)

    def cancel_body(self) -> None:
        """Interrupt the body (a cancel: the journal's flag is set already)."""
        self.notify()
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()

    def stop(self) -> None:
        """Stop here without writing more (the shard is lost or the runner stops)."""
        self.stopping = True
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()

    async def _suspend(self, outcome: Outcome) -> Deferred | None:
        assert outcome.until is not None
        async with self.lock:
            if self.news:
                return None
            self.j.state, self.j.waiting_for = "waiting", outcome.reason
            await self.write_locked()
            try:
                await self.host.messages.reschedule(
                    self.start.id, deliver_at=outcome.until,
                    error=f"waiting: {outcome.reason}", fence=self.fence)
            except (FencedOut, AlreadyProcessed) as exc:
                await self._lost(exc)
            self.closed = True
        return Deferred()

    # ---- ending --------------------------------------------------------------

async def _body(call: Awaitable[Any]) -> Any:
    return await call


def seconds_of(value: object, field: str) -> float:
    from covey.core.runtime import check_seconds
    seconds = check_seconds(field, value)
    if math.isinf(seconds):
        raise WorkflowError(f"{field} must be finite", reason=Reason.INVALID_ARGUMENT,
                            field=field)
    return seconds

