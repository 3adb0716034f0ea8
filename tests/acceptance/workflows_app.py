"""The application of the workflow acceptance tests (``test_workflows.py``).

``covey run tests.acceptance.workflows_app:cluster`` with ``COVEY_DATABASE_URL``
pointing at the test database, whose tables the test creates first (``SCHEMA``).
``WF_APP_VERSION`` (default 1) selects the code of the ``versioned`` workflow:
version 2 adds a patched step. The test process, a client-only cluster, calls
:func:`declare` too, so it starts executions through the same declarations.

Every effect is a row written through a step's transaction (``transaction=True``),
so it commits with the step's journal entry or not at all. No effects table has
a unique constraint: an effect applied twice shows as two rows. Rows carry the
pid of the runner process that wrote them (the test knows its runners' pids),
and a ``bigserial`` id that orders them. Each run of a step body is also counted
in ``step_runs`` on a connection of its own, outside covey's transaction, so
runs whose transaction never committed (a SIGKILL mid-step) are counted too.

- ``saga``: five steps, each inserting ``(workflow_id, step)`` into
  ``saga_effects`` and registering a compensation that inserts ``(workflow_id,
  step, 'undo')`` into ``saga_compensations``; a finalizer inserts one row into
  ``saga_finalizers``. The payload's ``fail_at`` step stages its effect and then
  raises (so its effect is rolled back).
- ``fanout``: one ``ctx.gather`` of three steps, each sleeping ``delays_ms[b]``
  before it inserts ``(workflow_id, branch)`` into ``fanout_effects``.
- ``versioned``: a step, then ``recv("go")``, then a step; version 2 runs an
  ``extra`` step behind ``ctx.patched("extra")`` before the ``recv``. Every step
  inserts ``(workflow_id, step, app_version)`` into ``version_steps``.
- ``sleeper``: a step (``before``), a durable ``ctx.sleep``, a step (``after``);
  both insert into ``sleep_marks`` with ``clock_timestamp()`` at commit.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

import covey

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE saga_effects (id bigserial, workflow_id text NOT NULL, step int NOT NULL,
                           pid int NOT NULL);
CREATE TABLE saga_compensations (id bigserial, workflow_id text NOT NULL, step int NOT NULL,
                                 kind text NOT NULL);
CREATE TABLE saga_finalizers (id bigserial, workflow_id text NOT NULL, pid int NOT NULL);
CREATE TABLE fanout_effects (id bigserial, workflow_id text NOT NULL, branch int NOT NULL,
                             pid int NOT NULL);
CREATE TABLE version_steps (id bigserial, workflow_id text NOT NULL, step text NOT NULL,
                            app_version int NOT NULL);
CREATE TABLE sleep_marks (id bigserial, workflow_id text NOT NULL, mark text NOT NULL,
                          pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE step_runs (id bigserial, workflow_id text NOT NULL, step text NOT NULL,
                        pid int NOT NULL);
"""

#: the code of the ``versioned`` workflow this process runs (1 or 2)
APP_VERSION = int(os.environ.get("WF_APP_VERSION", "1"))
SAGA_STEPS = 5

runs_pool = AppPool(max_size=2)  # autocommit: outside covey's transaction


class SagaOrder(BaseModel):
    n: int
    fail_at: int | None = None  # the step that fails (none: the saga completes)


class Fanout(BaseModel):
    delays_ms: list[int]  # one branch per delay


class Flow(BaseModel):
    label: str


class Nap(BaseModel):
    seconds: float


class StepDeclined(Exception):
    """A saga step that refuses (the payload's ``fail_at``)."""


async def _count_run(workflow_id: str, step: str) -> None:
    await (await runs_pool()).execute(
        "INSERT INTO step_runs (workflow_id, step, pid) VALUES ($1, $2, $3)",
        workflow_id, step, os.getpid())


async def saga_step(tx: Any, workflow_id: str, step: int, fail_at: int | None) -> int:
    await _count_run(workflow_id, f"step{step}")
    await tx.execute("INSERT INTO saga_effects (workflow_id, step, pid) VALUES ($1, $2, $3)",
                     workflow_id, step, os.getpid())
    if step == fail_at:  # after staging the effect: the failed step must keep none of it
        raise StepDeclined(f"step {step} of {workflow_id} declined")
    return step


async def saga_undo(tx: Any, workflow_id: str, step: int, fail_at: int | None) -> None:
    await tx.execute(
        "INSERT INTO saga_compensations (workflow_id, step, kind) VALUES ($1, $2, 'undo')",
        workflow_id, step)


async def saga_finalize(tx: Any, workflow_id: str) -> None:
    await tx.execute("INSERT INTO saga_finalizers (workflow_id, pid) VALUES ($1, $2)",
                     workflow_id, os.getpid())


async def fanout_branch(tx: Any, workflow_id: str, branch: int, delay_ms: int) -> int:
    await _count_run(workflow_id, f"branch{branch}")  # the test reads where branches run
    await asyncio.sleep(delay_ms / 1000)
    await tx.execute("INSERT INTO fanout_effects (workflow_id, branch, pid) VALUES ($1, $2, $3)",
                     workflow_id, branch, os.getpid())
    return branch * 1000 + delay_ms


async def version_mark(tx: Any, workflow_id: str, step: str) -> str:
    # APP_VERSION is read here, not passed: a replay must call the step as it was called
    await tx.execute(
        "INSERT INTO version_steps (workflow_id, step, app_version) VALUES ($1, $2, $3)",
        workflow_id, step, APP_VERSION)
    return step


async def sleep_mark(tx: Any, workflow_id: str, mark: str) -> int:
    await tx.execute("INSERT INTO sleep_marks (workflow_id, mark, pid) VALUES ($1, $2, $3)",
                     workflow_id, mark, os.getpid())
    return os.getpid()


def declare(cluster: covey.Cluster, app_version: int = APP_VERSION) -> dict[str, covey.Workflow]:
    """Declare the test workflows on ``cluster`` (``versioned`` as of ``app_version``)."""

    @cluster.workflow("saga")
    async def saga(ctx: covey.WorkflowContext, order: SagaOrder) -> list[int]:
        ctx.finalizer(saga_finalize, ctx.workflow_id, transaction=True)
        done: list[int] = []
        for step in range(1, SAGA_STEPS + 1):
            done.append(await ctx.step(saga_step, ctx.workflow_id, step, order.fail_at,
                                       name="step", compensate=saga_undo, transaction=True))
        return done

    @cluster.workflow("fanout")
    async def fanout(ctx: covey.WorkflowContext, job: Fanout) -> list[int]:
        results = await ctx.gather(*(
            ctx.step(fanout_branch, ctx.workflow_id, branch, delay, transaction=True)
            for branch, delay in enumerate(job.delays_ms)))
        return list(results)

    @cluster.workflow("sleeper")
    async def sleeper(ctx: covey.WorkflowContext, nap: Nap) -> list[int]:
        before = await ctx.step(sleep_mark, ctx.workflow_id, "before", name="before",
                                transaction=True)
        await ctx.sleep(nap.seconds)
        after = await ctx.step(sleep_mark, ctx.workflow_id, "after", name="after",
                               transaction=True)
        return [before, after]

    return {"saga": saga, "fanout": fanout, "sleeper": sleeper,
            "versioned": _versioned(cluster, app_version)}


def _versioned(cluster: covey.Cluster, app_version: int) -> covey.Workflow:
    """The ``versioned`` workflow as deployed in ``app_version`` (same name and
    declared version: the code changed, guarded by ``ctx.patched``)."""
    if app_version == 1:
        @cluster.workflow("versioned")
        async def versioned_v1(ctx: covey.WorkflowContext, flow: Flow) -> str:
            await ctx.step(version_mark, ctx.workflow_id, "first", name="first",
                           transaction=True)
            go = await ctx.recv("go")
            await ctx.step(version_mark, ctx.workflow_id, "last", name="last", transaction=True)
            return f"plain:{go}"

        return versioned_v1

    @cluster.workflow("versioned")
    async def versioned_v2(ctx: covey.WorkflowContext, flow: Flow) -> str:
        await ctx.step(version_mark, ctx.workflow_id, "first", name="first", transaction=True)
        path = "plain"
        if await ctx.patched("extra"):
            await ctx.step(version_mark, ctx.workflow_id, "extra", name="extra",
                           transaction=True)
            path = "extra"
        go = await ctx.recv("go")
        await ctx.step(version_mark, ctx.workflow_id, "last", name="last", transaction=True)
        return f"{path}:{go}"

    return versioned_v2


def cluster() -> covey.Cluster:
    app = covey.Cluster.from_env()
    declare(app)
    return app
