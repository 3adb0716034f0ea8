"""Steps: run a function at least once, journal its result once.

A plain step's result joins the journal in memory and is written before the
next effect can depend on it (the next step, a wait, the end). A step with
``transaction=True`` gets a transaction handle of the store: its writes and its
journal entry commit together, in a unit of work of a step message of its own
(stored under a primary key made of its sequence number, so a re-run finds it),
fenced by the shard's epoch: its effect on the application's tables happens
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from covey.core import (
    AlreadyProcessed,
    FencedOut,
    Reason,
    VersionConflict,
    WorkflowError,
    metrics,
)
from covey.core.runtime import validate
from covey.jobs import Retry
from covey.storage import Duplicate, Message, Reply
from covey.workflows._journal import DONE, FAILED, Entry, plain

if TYPE_CHECKING:
    from covey.workflows._execution import Execution

#: the tag of a transactional step's own message
STEP_TAG = "step"

_hints: dict[Any, Any] = {}


def result_type_of(fn: Callable[..., Any]) -> Any:
    """``fn``'s return annotation (``Any`` without one, or when it does not resolve)."""
    try:
        return _hints[fn]
    except (KeyError, TypeError):
        pass
    try:
        tp = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        tp = Any
    if inspect.iscoroutinefunction(fn) or tp is None:
        tp = Any if tp is None else tp
    with contextlib.suppress(TypeError):
        _hints[fn] = tp
    return tp


async def call_step(fn: Callable[..., Any], args: tuple[Any, ...],
                    timeout: float | None) -> Any:
    """Call ``fn(*args)`` (async or not) within ``timeout`` seconds."""
    if timeout is None:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result
    async with asyncio.timeout(timeout):
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result


def step_failed(key: str, error_type: str, message: str, workflow_id: str) -> WorkflowError:
    """What the workflow sees when a step failed (on its first run and on replay alike)."""
    return WorkflowError(f"step {key} failed: {error_type}: {message}",
                         reason=Reason.WORKFLOW_FAILED, step=key, error_type=error_type,
                         message=message, workflow_id=workflow_id)


async def run_step(ex: Execution, seq: int, key: str, kind: str, fn: Callable[..., Any],
                   args: tuple[Any, ...], *, retry: Retry | None, timeout: float | None,
                   transaction: bool, result_type: Any) -> Any:
    """Run a step that is not journaled yet, journal its result (or its failure)."""
    attempts = retry.max_attempts if retry is not None else 1
    attempt = 0
    while True:
        attempt += 1
        await ex.flush()  # what it may depend on is durable before it acts
        if kind == "step":  # compensations run because of a cancel: they go on
            ex.check_cancel()
        started = time.perf_counter()
        try:
            if transaction:
                return await _transactional(ex, seq, key, kind, fn, args, timeout, result_type)
            result = await call_step(fn, args, timeout)
            value = plain(result)
            out = value if result_type is Any else validate(value, result_type)
            ex.record(seq, Entry(key, kind, DONE, result=value))
            return out
        except Exception as exc:
            if isinstance(exc, WorkflowError) and exc.reason is Reason.NONDETERMINISM:
                raise
            if retry is not None and attempt < attempts and retry.should_retry(exc, attempt):
                await ex.host.clock.sleep(retry.backoff.delay(attempt, retry.jitter))
                continue
            error_type, message = type(exc).__name__, str(exc)
            if isinstance(exc, TimeoutError):
                message = message or f"timed out after {timeout} s"
            ex.record(seq, Entry(key, kind, FAILED,
                                 error={"error_type": error_type, "message": message}))
            await ex.flush()
            if transaction:
                await close_step_message(ex, seq, f"{error_type}: {message}")
            raise step_failed(key, error_type, message, ex.workflow_id) from exc
        finally:
            metrics.WORKFLOW_STEP_SECONDS.labels(ex.spec.name).observe(
                time.perf_counter() - started)


async def _transactional(ex: Execution, seq: int, key: str, kind: str,
                         fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None,
                         result_type: Any) -> Any:
    host = ex.host
    message = Message(host.next_id(), ex.start.address, STEP_TAG, b"",
                      primary_key=f"{ex.start.id}:{seq}")
    saved = await host.messages.save_request(message)
    request_id = message.id
    if isinstance(saved, Duplicate):
        if saved.reply is not None:
            # committed with its journal entry, which this copy of the journal lacks
            await ex._lost(VersionConflict(f"workflow {ex.workflow_id!r}: its journal "
                                           "changed under this run"))
        request_id = saved.original_id
    unit = host.messages.unit(ex.fence, request_id)
    try:
        tx = await unit.transaction()
        result = await call_step(fn, (tx, *args), timeout)
        value = plain(result)
        out = value if result_type is Any else validate(value, result_type)
        async with ex.lock:
            previous = ex.j.entries.get(seq)
            ex.record(seq, Entry(key, kind, DONE, result=value))
            ex.j.updated_at = host.clock.now()
            unit.put_state(ex.key, ex.j.encode(), expected_version=ex.version)
            try:
                await unit.commit(Reply(request_id, b""))
            except (FencedOut, VersionConflict, AlreadyProcessed) as exc:
                _restore(ex, seq, previous)
                await ex._lost(exc)
            except BaseException:
                _restore(ex, seq, previous)
                raise
            ex.version = (ex.version or 0) + 1
            ex.dirty = False
        return out
    except BaseException:
        await unit.discard()
        raise


def _restore(ex: Execution, seq: int, previous: Entry | None) -> None:
    if previous is None:
        ex.j.entries.pop(seq, None)
    else:
        ex.j.entries[seq] = previous
    ex.dirty = True


async def close_step_message(ex: Execution, seq: int, error: str) -> None:
    """Complete a transactional step's message that will not commit (its step failed
    for good), so storage stops handing it out."""
    found = await ex.host.messages.find(ex.start.address, STEP_TAG, f"{ex.start.id}:{seq}")
    if found is None:
        return
    with contextlib.suppress(AlreadyProcessed, FencedOut):
        await ex.host.messages.save_reply(
            Reply(found, error.encode(), is_error=True), ex.fence)
