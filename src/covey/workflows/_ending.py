"""How an execution ends: compensations, finalizers and the outcome's commit.

When the workflow function returned or raised (or was cancelled), the
compensations of the steps that started run newest first, each journaled once;
then the finalizers, each once; then the journal's final state and the outcome
are committed, fenced by the shard's epoch. An ending that sends nothing (no
parent to tell, no children to cancel) and has no transactional finalizer is
one durable journal write, the start message's reply stored after it; another
commits everything in the start message's unit of work.
"""

from __future__ import annotations

from typing import Any

from covey.core import (
    AlreadyProcessed,
    ClusterError,
    FencedOut,
    Reason,
    VersionConflict,
    WorkflowError,
    metrics,
)
from covey.sharding.runtime import Completed
from covey.storage import Reply, UnitOfWork
from covey.workflows._definition import PARENT_HEADER
from covey.workflows._execution import FINALIZER_BASE, Execution, Outcome, log
from covey.workflows._journal import DONE, FAILED, Entry


async def finish(ex: Execution, outcome: Outcome) -> Completed:
    errors: list[dict[str, str]] = []
    if outcome.state in ("failed", "cancelled"):
        errors = await _compensate(ex)
    state = outcome.state
    if state == "failed" and ex.compensations and not errors:
        state = "compensated"
    transactional = state != "failed_nondeterministic" and any(
        f.transaction for f in ex.finalizers)
    tells = bool(ex.start.headers.get(PARENT_HEADER)) or (
        state == "cancelled" and bool(ex.j.children))
    if not transactional and not tells:
        return await _finish_plainly(ex, state, outcome, errors)
    unit = ex.host.messages.unit(ex.fence, ex.start.id)
    try:
        if state != "failed_nondeterministic":
            await _finalize(ex, unit)
        body = _outcome_body(ex, state, outcome, errors)
        sends = ex.host.child_messages(ex, body, cancelled=state == "cancelled")
        async with ex.lock:
            ex.j.state, ex.j.waiting_for, ex.j.outcome = state, None, body
            ex.j.updated_at = ex.host.clock.now()
            unit.put_state(ex.key, ex.j.encode(), expected_version=ex.version)
            if sends:
                unit.send(sends)
            reply = Reply(ex.start.id, ex.codec.encode(body),
                          is_error=state != "completed")
            try:
                await unit.commit(reply)
            except AlreadyProcessed:
                stored = await ex._stored_outcome()
                if isinstance(stored, Completed):
                    return stored
                raise
            except (FencedOut, VersionConflict) as exc:
                await ex._lost(exc)
            ex.version = (ex.version or 0) + 1
            ex.dirty = False
            ex.closed = True
    except BaseException:
        await unit.discard()
        raise
    ex.host.wake_sent(unit.sent)
    metrics.WORKFLOWS_ENDED.labels(ex.spec.name, state).inc()
    return Completed(reply)

async def _finish_plainly(ex: Execution, state: str, outcome: Outcome,
                          errors: list[dict[str, str]]) -> Completed:
    """The end of an execution that sends nothing and has no transactional
    finalizer: its journal (final state and outcome) is one fenced write; the
    start message's reply is stored after, in the background. Should the runner
    die in between, the start message runs again, finds the journal ended and
    stores its outcome then."""
    if state != "failed_nondeterministic":
        await _finalize(ex, None)
    body = _outcome_body(ex, state, outcome, errors)
    reply = Reply(ex.start.id, ex.codec.encode(body), is_error=state != "completed")
    async with ex.lock:
        ex.j.state, ex.j.waiting_for, ex.j.outcome = state, None, body
        await ex.write_locked()
        ex.closed = True
    ex.host.complete_later(reply, ex.fence)
    metrics.WORKFLOWS_ENDED.labels(ex.spec.name, state).inc()
    return Completed(reply)

def _outcome_body(ex: Execution, state: str, outcome: Outcome,
                  errors: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"state": state, "workflow_id": ex.workflow_id}
    if state == "completed":
        body["result"] = outcome.result
        return body
    error = outcome.error
    if error is not None:
        kind, message = describe(error)
        body["error_type"], body["message"] = kind, message
        step = getattr(error, "details", {}).get("step") if isinstance(
            error, ClusterError) else None
        if step is not None:
            body["step"] = step
    elif state == "cancelled":
        body["error_type"], body["message"] = "Cancelled", "the workflow was cancelled"
    body["compensation_errors"] = errors
    return body

async def _compensate(ex: Execution) -> list[dict[str, str]]:
    """Run the registered compensations, newest first, each once (journaled); the
    unwind goes on past a failing one. Returns the failures."""
    from covey.workflows._steps import run_step

    errors: list[dict[str, str]] = []
    for comp in reversed(ex.compensations):
        seq = -comp.seq
        key = f"{comp.key}:compensate"
        entry = ex.j.entries.get(seq)
        if entry is not None and entry.status == DONE:
            continue
        if entry is not None and entry.status == FAILED:
            errors.append({"step": key, **(entry.error or {})})
            continue
        try:
            await run_step(ex, seq, key, "compensate", comp.fn, comp.args,
                           retry=comp.retry, timeout=comp.timeout,
                           transaction=comp.transaction, result_type=Any)
        except WorkflowError as exc:
            if exc.reason is Reason.NONDETERMINISM:
                raise
            errors.append({"step": key, "error_type": str(exc.details.get("error_type")),
                           "message": str(exc.details.get("message"))})
    await ex.flush()
    return errors

async def _finalize(ex: Execution, unit: UnitOfWork | None) -> None:
    """Run each finalizer once: a transactional one inside the final unit (it
    commits with the outcome), another before it (journaled)."""
    from covey.workflows._steps import call_step

    for index, fin in enumerate(ex.finalizers):
        seq = FINALIZER_BASE - index
        name = str(getattr(fin.fn, "__qualname__", "fn")).rsplit("<locals>.", 1)[-1]
        key = f"finalizer:{name}"
        entry = ex.j.entries.get(seq)
        if entry is not None:
            continue
        try:
            if fin.transaction:
                assert unit is not None
                tx = await unit.transaction()
                await call_step(fin.fn, (tx, *fin.args), None)
            else:
                await call_step(fin.fn, fin.args, None)
            ex.record(seq, Entry(key, "finalizer", DONE))
        except Exception as exc:
            kind, message = describe(exc)
            log.warning("workflow %s: finalizer %s failed: %s: %s", ex.workflow_id,
                        key, kind, message)
            ex.record(seq, Entry(key, "finalizer", FAILED,
                                   error={"error_type": kind, "message": message}))
        if not fin.transaction:
            await ex.flush()



def describe(error: BaseException) -> tuple[str, str]:
    """The type name and message a failure is reported with (a step's failure
    reports the step function's own error)."""
    if isinstance(error, WorkflowError) and error.details.get("error_type"):
        return str(error.details["error_type"]), str(error.details.get("message", ""))
    return type(error).__name__, str(error)
