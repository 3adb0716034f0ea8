"""WorkflowContext: what a workflow function does through ``ctx``.

Every operation takes the next sequence number of the run and a key (its name
plus a per-name counter). When the journal holds an entry at that number, the
operation returns what is journaled (checking the key: a journal that does not
fit the code is ``nondeterminism``); otherwise it acts and journals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random as _random
import uuid as _uuid
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from covey.core import Reason, WorkflowError
from covey.core.runtime import invalid_argument, sleep_or_wake, validate
from covey.jobs import Retry
from covey.workflows._definition import Workflow, check_workflow_id
from covey.workflows._execution import (
    IN_GATHER,
    IN_PROCESS_WAIT,
    RECHECK,
    Compensation,
    Finalizer,
    Suspend,
    seconds_of,
)
from covey.workflows._journal import DONE, FAILED, REGISTERED, WAITING, Entry, plain
from covey.workflows._steps import result_type_of, run_step, step_failed

if TYPE_CHECKING:
    from covey.workflows._execution import Execution

#: inbox topics covey itself uses
CHILD_TOPIC = "__child__:"
AWAKEABLE_TOPIC = "__awakeable__:"


class StepCall:
    """One ``ctx.step(...)``: its sequence number is taken when it is made, so steps
    handed to :meth:`WorkflowContext.gather` journal in argument order."""

    def __init__(self, ex: Execution, fn: Callable[..., Any], args: tuple[Any, ...],
                 name: str | None, retry: Retry | None, timeout: float | None,
                 compensate: Callable[..., Any] | None, transaction: bool) -> None:
        if not callable(fn):
            raise invalid_argument("fn", f"{fn!r} is not callable")
        if retry is not None and not isinstance(retry, Retry):
            raise invalid_argument("retry", f"{retry!r} is not a covey.Retry")
        if compensate is not None and not callable(compensate):
            raise invalid_argument("compensate", f"{compensate!r} is not callable")
        self.ex = ex
        self.fn = fn
        self.args = args
        self.retry = retry
        self.timeout = timeout
        self.compensate = compensate
        self.transaction = transaction
        label = name if name is not None else _name_of(fn)
        self.seq, self.key = ex.next_seq(str(label))
        self._used = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self.run().__await__()

    async def run(self) -> Any:
        if self._used:
            raise invalid_argument("step", f"step {self.key} was awaited twice")
        self._used = True
        ex = self.ex
        task = asyncio.current_task()
        if task is not ex.body_task and not IN_GATHER.get():
            raise WorkflowError(
                f"step {self.key} ran in a task of its own (asyncio.gather, create_task, "
                "wait, ...): its journal order would depend on scheduling; run steps "
                "concurrently with ctx.gather(...)", reason=Reason.INVALID_ARGUMENT,
                step=self.key, workflow_id=ex.workflow_id)
        entry = ex.replayed(self.seq, self.key, "step")
        if self.compensate is not None:
            ex.compensations.append(Compensation(
                self.seq, self.key, self.compensate, self.args, self.retry, self.timeout,
                self.transaction))
        if entry is not None:
            if entry.status == DONE:
                rtype = result_type_of(self.fn)
                return entry.result if rtype is Any else validate(entry.result, rtype)
            if entry.status == FAILED:
                error = entry.error or {}
                raise step_failed(self.key, str(error.get("error_type")),
                                  str(error.get("message")), ex.workflow_id)
        ex.check_cancel()
        if self.compensate is not None and entry is None:
            # recorded before the step acts: a step that timed out may still have acted
            ex.record(self.seq, Entry(self.key, "step", REGISTERED))
            await ex.flush()
        return await run_step(ex, self.seq, self.key, "step", self.fn, self.args,
                              retry=self.retry, timeout=self.timeout,
                              transaction=self.transaction,
                              result_type=result_type_of(self.fn))


class Awakeable:
    """A value to be delivered from outside: hand :attr:`token` out (an HTTP
    callback, an email link), then ``await awakeable.result()``; someone calls
    ``cluster.resolve(token, value)``."""

    def __init__(self, ctx: WorkflowContext, seq: int, token: str) -> None:
        self._ctx = ctx
        self._seq = seq
        self.token = token

    async def result(self, timeout: dt.timedelta | float | None = None) -> Any:
        """The resolved value (``None`` if ``timeout`` passed first)."""
        return await self._ctx._wait("awakeable", f"{AWAKEABLE_TOPIC}{self._seq}", timeout)


class ChildHandle:
    """A child workflow started by :meth:`WorkflowContext.start_child`."""

    def __init__(self, ctx: WorkflowContext, workflow_id: str, result_type: Any) -> None:
        self._ctx = ctx
        self.workflow_id = workflow_id
        self._result_type = result_type

    async def result(self) -> Any:
        """The child's result (a durable wait); its failure as a ``WorkflowError``."""
        outcome = await self._ctx._wait("child", f"{CHILD_TOPIC}{self.workflow_id}", None)
        if not isinstance(outcome, dict):
            raise WorkflowError(f"child {self.workflow_id!r} sent no outcome",
                                reason=Reason.WORKFLOW_FAILED)
        if outcome.get("state") == "completed":
            result = outcome.get("result")
            return result if self._result_type is Any else validate(result, self._result_type)
        state = str(outcome.get("state"))
        raise WorkflowError(
            f"child workflow {self.workflow_id!r} ended {state}: "
            f"{outcome.get('error_type')}: {outcome.get('message')}",
            reason=Reason.WORKFLOW_CANCELLED if state == "cancelled" else Reason.WORKFLOW_FAILED,
            workflow_id=self.workflow_id, state=state,
            error_type=str(outcome.get("error_type")), message=str(outcome.get("message")))


class WorkflowContext:
    """What a workflow function gets as ``ctx`` (see docs/workflows.md).

    Attributes:
        workflow_id: this execution's id.
        name: the workflow's name.
        version: the version this execution started with.
    """

    def __init__(self, ex: Execution) -> None:
        self._ex = ex
        self.workflow_id = ex.workflow_id
        self.name = ex.spec.name
        self.version = ex.j.version

    # ---- steps -----------------------------------------------------------

    def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
             retry: Retry | None = None, timeout: dt.timedelta | float | None = None,
             compensate: Callable[..., Any] | None = None,
             transaction: bool = False) -> StepCall:
        """Run ``fn(*args)`` once per execution; ``await`` it for its result.

        Args:
            name: the step's name in the journal (default: ``fn``'s qualified name).
            retry: attempts and backoff (default: one attempt).
            timeout: seconds (or a timedelta) per attempt.
            compensate: ``compensate(*args)`` undoes it; registered before the step
                runs, run (once) if the workflow fails or is cancelled later.
            transaction: call ``fn(tx, *args)`` with the store's transaction handle:
                its writes commit with the step's journal entry (exactly once).
        """
        return StepCall(self._ex, fn, args, name, retry,
                        None if timeout is None else seconds_of(timeout, "timeout"),
                        compensate, transaction)

    async def gather(self, *steps: StepCall) -> list[Any]:
        """Run steps concurrently; their results in argument order. All of them run to
        their end; the first failure (in argument order) is raised then."""
        for step in steps:
            if not isinstance(step, StepCall):
                raise invalid_argument("steps", f"{step!r} is not a ctx.step(...) call")
        loop = asyncio.get_running_loop()
        token = IN_GATHER.set(True)
        try:
            tasks = [loop.create_task(step.run()) for step in steps]
        finally:
            IN_GATHER.reset(token)
        try:
            await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        for task in tasks:  # a loss or a wait first, then the first failure
            exc = task.exception()
            if exc is not None and not isinstance(exc, Exception):
                raise exc
        for task in tasks:
            exc = task.exception()
            if exc is not None:
                raise exc
        return [task.result() for task in tasks]

    def finalizer(self, fn: Callable[..., Any], *args: Any, transaction: bool = False) -> None:
        """Run ``fn(*args)`` exactly once when the workflow ends, whatever the outcome
        (``transaction=True``: ``fn(tx, *args)``, committed with the outcome)."""
        if not callable(fn):
            raise invalid_argument("fn", f"{fn!r} is not callable")
        self._ex.finalizers.append(Finalizer(fn, args, transaction))

    # ---- journaled values ----------------------------------------------------

    async def _value(self, kind: str, make: Callable[[], Any]) -> Any:
        ex = self._ex
        seq, key = ex.next_seq(kind)
        entry = ex.replayed(seq, key, kind)
        if entry is not None:
            return entry.result
        value = plain(make())
        ex.record(seq, Entry(key, kind, DONE, result=value))
        return value

    async def now(self) -> dt.datetime:
        """The current time (UTC), the same on every run of this execution."""
        stamp = await self._value("now", self._ex.host.clock.now)
        return dt.datetime.fromtimestamp(float(stamp), dt.UTC)

    async def uuid(self) -> _uuid.UUID:
        """A random UUID, the same on every run of this execution."""
        return _uuid.UUID(str(await self._value("uuid", lambda: str(_uuid.uuid4()))))

    async def random(self) -> float:
        """A random float in [0, 1), the same on every run of this execution."""
        return float(await self._value("random", _random.random))

    async def patched(self, name: str) -> bool:
        """``True`` for an execution that reaches this point with this code (it takes
        the new path, recorded); ``False`` for one that passed it with older code."""
        ex = self._ex
        ex.seq += 1
        seq = ex.seq
        key = f"patch:{name}"
        entry = ex.j.entries.get(seq)
        if entry is not None:
            if entry.kind == "patch" and entry.key == key:
                return True
            ex.seq -= 1  # an older execution: the journal goes on with the old path
            return False
        if any(s > seq for s in ex.j.entries):
            ex.seq -= 1
            return False
        ex.record(seq, Entry(key, "patch", DONE, result=True))
        return True

    # ---- time, messages, events -----------------------------------------------

    async def sleep(self, duration: dt.timedelta | float) -> None:
        """Wait ``duration`` (a durable timer: survives restarts and pod moves)."""
        seconds = seconds_of(duration, "duration")
        ex = self._ex
        seq, key = ex.next_seq("sleep")
        entry = ex.replayed(seq, key, "sleep")
        if entry is not None and entry.status == DONE:
            return
        ex.check_cancel()
        if entry is None:
            entry = Entry(key, "sleep", WAITING, until=ex.host.clock.now() + seconds)
            ex.record(seq, entry)
            ex.waiting(f"sleep until {_when(entry.until or 0.0)}")
            await ex.flush()
        assert entry.until is not None
        while True:
            remaining = entry.until - ex.host.clock.now()
            if remaining <= 0:
                # not a checkpoint of its own: a run again finds the deadline passed
                # and goes on the same way; the next write records it done
                entry.status = DONE
                ex.waiting(None)
                return
            if remaining > IN_PROCESS_WAIT:
                raise Suspend(entry.until, f"sleep until {_when(entry.until)}")
            await ex.host.clock.sleep(remaining)

    async def recv(self, topic: str, timeout: dt.timedelta | float | None = None,
                   *, type: Any = Any) -> Any:
        """The next message sent to this workflow on ``topic`` (consumed once), or
        ``None`` when ``timeout`` passes first (default: wait for ever)."""
        if not isinstance(topic, str) or not topic or topic.startswith("__"):
            raise invalid_argument("topic", f"{topic!r} is not a topic name")
        value = await self._wait("recv", topic, timeout)
        return value if value is None or type is Any else validate(value, type)

    async def _wait(self, kind: str, topic: str,
                    timeout: dt.timedelta | float | None) -> Any:
        ex = self._ex
        seq, key = ex.next_seq(f"{kind}:{topic}")
        entry = ex.replayed(seq, key, kind)
        if entry is not None and entry.status == DONE:
            return entry.result
        ex.check_cancel()
        if entry is None:
            until = None if timeout is None else (
                ex.host.clock.now() + seconds_of(timeout, "timeout"))
            entry = Entry(key, kind, WAITING, until=until)
            ex.record(seq, entry)
            ex.waiting(f"{kind} {topic}")
            await ex.flush()
        waited = 0.0
        while True:
            for index, item in enumerate(ex.j.inbox):
                if item.get("t") == topic:
                    del ex.j.inbox[index]
                    entry.status, entry.result = DONE, item.get("p")
                    ex.dirty = True
                    ex.waiting(None)
                    return entry.result
            now = ex.host.clock.now()
            if entry.until is not None and now >= entry.until:
                entry.status, entry.result = DONE, None
                ex.dirty = True
                ex.waiting(None)
                return None
            remaining = RECHECK if entry.until is None else entry.until - now
            if waited >= IN_PROCESS_WAIT:
                raise Suspend(min(now + RECHECK, now + remaining), f"{kind} {topic}")
            ex.changed.clear()
            pause = min(remaining, IN_PROCESS_WAIT - waited)
            started = ex.host.clock.monotonic()
            await sleep_or_wake(ex.host.clock, ex.changed, pause)
            waited += ex.host.clock.monotonic() - started
            ex.check_cancel()

    async def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` for ``cluster.get_event(workflow_id, key)``."""
        if not isinstance(key, str) or not key:
            raise invalid_argument("key", f"{key!r} is not an event key")
        ex = self._ex
        seq, entry_key = ex.next_seq(f"event:{key}")
        entry = ex.replayed(seq, entry_key, "event")
        if entry is not None:
            return
        ex.check_cancel()
        ex.j.events[key] = plain(value)
        ex.record(seq, Entry(entry_key, "event", DONE))
        await ex.flush()

    async def awakeable(self) -> Awakeable:
        """A signed token for a value to be delivered from outside (see :class:`Awakeable`)."""
        ex = self._ex
        seq, key = ex.next_seq("awakeable")
        entry = ex.replayed(seq, key, "awakeable")
        if entry is None:
            ex.check_cancel()
            token = ex.host.sign(ex.workflow_id, seq)
            ex.record(seq, Entry(key, "awakeable", DONE, result=token))
            await ex.flush()  # journaled before the token can leave the workflow
        else:
            token = str(entry.result)
        return Awakeable(self, seq, token)

    # ---- children ----------------------------------------------------------------

    async def start_child(self, workflow: Workflow | str, payload: Any, *,
                          workflow_id: str | None = None,
                          detached: bool = False) -> ChildHandle:
        """Start a child workflow (id: ``workflow_id``, or this one's id plus the
        step key); cancelling this workflow cancels it unless ``detached``."""
        ex = self._ex
        name = workflow.name if isinstance(workflow, Workflow) else str(workflow)
        seq, key = ex.next_seq(f"child:{name}")
        entry = ex.replayed(seq, key, "start_child")
        result_type = workflow.result_type if isinstance(workflow, Workflow) else Any
        if entry is not None:
            return ChildHandle(self, str(entry.result), result_type)
        ex.check_cancel()
        child_id = check_workflow_id(workflow_id) if workflow_id is not None else (
            f"{ex.workflow_id}/{key}")
        await ex.flush()
        await ex.host.start_child(ex, workflow, payload, child_id, detached)
        if not detached:
            ex.j.children.append(child_id)
        ex.record(seq, Entry(key, "start_child", DONE, result=child_id))
        await ex.flush()
        return ChildHandle(self, child_id, result_type)


def _name_of(fn: Callable[..., Any]) -> str:
    """A step's default name: its qualified name without the enclosing functions."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return str(qualname).rsplit("<locals>.", 1)[-1]


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(timespec="seconds")

