"""Durable workflows across real runner processes on PostgreSQL, under SIGKILL.

The runners serve ``tests.acceptance.workflows_app:cluster``; this test is a
client-only cluster that declares the same workflows (``workflows_app.declare``)
and starts executions through them. Effects are rows written through the steps'
transactions into tables without unique constraints (see the app's docstring),
so a step, compensation or finalizer applied twice shows as two rows.

1. Sagas: ``WF_SAGAS`` (default 1,000) five-step sagas, started over
   ``WF_SAGA_SPREAD`` seconds, one in ten failing at step 4, while a random
   runner of three is SIGKILLed and restarted every 3 s until every saga ended.
2. Gather: ``fanout`` executions (a ``ctx.gather`` of three 100-300 ms steps)
   whose runner is SIGKILLed during the gather, batch after batch, until 100 of
   them were interrupted; every one recovers on another runner and completes.
3. Versioning: an execution started on ``WF_APP_VERSION=1`` runners waits in
   ``recv``; every runner is replaced by version 2 (a step behind
   ``ctx.patched("extra")``); the old execution completes on the old path, a
   new one takes the new path.
4. Durable sleep: 200 executions sleep 1 s on two runners; the one holding most
   of them is SIGKILLed during the sleep; every one wakes (not early) on the
   survivor and completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import pytest

import covey
from covey.core import Reason

from . import workflows_app
from ._harness import RunnerProcess, start_live, wait_until
from .conftest import client_config
from .workflows_app import SCHEMA, Fanout, Flow, Nap, SagaOrder

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.workflows_app:cluster"
# Each runner's covey pool: smaller than the default 10, so three runners, their
# replacements and other tests stay well inside the server's max_connections.
RUNNER = {"app": APP, "COVEY_STORAGE_POOL_SIZE": "6"}
ENDED = frozenset({"completed", "compensated", "failed", "cancelled", "failed_nondeterministic"})
ATTEMPTS = 20  # per start; every attempt carries the same workflow id
# Every covey session of one runner: ``covey-<role>:<runner address>``.
SESSIONS = ("SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'covey-%:' || $1")

Start = Callable[..., RunnerProcess]
Defs = dict[str, covey.Workflow]


@pytest.fixture
async def db(fresh_pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fresh_pg_database)
    await conn.execute(SCHEMA)
    yield conn
    await conn.close()


@pytest.fixture
async def caller(fresh_pg_database: str,
                 db: asyncpg.Connection) -> AsyncIterator[tuple[covey.Cluster, Defs]]:
    cluster = covey.Cluster(client_config(fresh_pg_database), client_only=True)
    defs = workflows_app.declare(cluster)
    async with cluster:
        yield cluster, defs


async def start_workflow(caller: covey.Cluster, workflow: covey.Workflow, payload: Any,
                         workflow_id: str) -> Any:
    """``cluster.start``, again on a retryable error (the id makes it idempotent)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await caller.start(workflow, payload, workflow_id=workflow_id)
        except covey.ClusterError as exc:
            if not exc.retryable or attempt == ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


async def states_of(caller: covey.Cluster, name: str, count: int) -> dict[str, str]:
    """Every execution of ``name``: workflow id -> state."""
    found = await caller.workflows.list(name=name, limit=count + 100)
    return {s.workflow_id: s.state for s in found}


async def all_ended(caller: covey.Cluster, name: str, ids: Sequence[str]) -> dict[str, str]:
    """Wait until every one of ``ids`` has ended; their states."""
    states: dict[str, str] = {}

    async def ended() -> bool:
        states.update(await states_of(caller, name, len(ids)))
        return all(states.get(i) in ENDED for i in ids)

    await wait_until(ended, timeout=120, interval=0.5)
    return {i: states[i] for i in ids}


async def sessions_gone(db: asyncpg.Connection, victim: RunnerProcess) -> None:
    """Wait until the server has no session of ``victim`` left: nothing it started
    can commit any more, so what the tables hold now is what it left behind."""
    await wait_until(lambda: _no_sessions(db, victim), timeout=30, interval=0.05)


async def _no_sessions(db: asyncpg.Connection, victim: RunnerProcess) -> bool:
    return bool(await db.fetchval(SESSIONS, victim.address) == 0)


# -- 1. sagas under kills --------------------------------------------------------------

SAGAS = int(os.environ.get("WF_SAGAS", "1000"))
SAGA_SPREAD = float(os.environ.get("WF_SAGA_SPREAD", "24"))  # seconds over which sagas start
SAGA_CONCURRENCY = 16
KILL_EVERY = 3.0
FAIL_AT = 4


def saga_plan(count: int) -> list[tuple[str, SagaOrder]]:
    """One saga in ten fails at step 4 (the payload says which)."""
    return [(f"saga-{n:05d}", SagaOrder(n=n, fail_at=FAIL_AT if n % 10 == 0 else None))
            for n in range(count)]


def expected_saga(order: SagaOrder) -> tuple[list[int], list[int], str]:
    """(steps whose effect commits, compensations in the order they run, final state).

    A saga that completes keeps steps 1..5 and compensates nothing. One failing at
    step 4: steps 1..3 commit; step 4 stages its effect and raises, so its
    transaction rolls back (no row for 4) and step 5 never starts. Its compensation
    was registered before it ran, so the steps that *started* are compensated, in
    reverse order: 4, 3, 2, 1 (compensating 4 is the app's business: here an
    ``undo`` row). The finalizer runs once either way.
    """
    if order.fail_at is None:
        return list(range(1, workflows_app.SAGA_STEPS + 1)), [], "completed"
    return (list(range(1, order.fail_at)), list(range(order.fail_at, 0, -1)), "compensated")


async def start_paced(caller: covey.Cluster, workflow: covey.Workflow,
                      planned: Sequence[tuple[str, Any]], spread: float) -> list[Any]:
    """Start every planned execution, paced evenly over ``spread`` seconds."""
    todo = iter(enumerate(planned))
    handles: list[Any] = []
    began = time.monotonic()

    async def worker() -> None:
        for n, (workflow_id, payload) in todo:
            # a slot missed (starts stalled by a failover) is taken at once
            await asyncio.sleep(max(0.0, began + spread * n / len(planned) - time.monotonic()))
            handles.append(await start_workflow(caller, workflow, payload, workflow_id))

    await asyncio.gather(*(worker() for _ in range(SAGA_CONCURRENCY)))
    return handles


async def kill_every(procs: list[RunnerProcess], start: Start, every: float,
                     stop: asyncio.Event, rng: random.Random) -> tuple[int, int]:
    """SIGKILL a random runner every ``every`` s until ``stop`` is set, and start a
    new one in its place; (kills, ticks skipped).

    A replacement starts in a thread of its own while the schedule goes on (on a
    loaded machine a start takes longer than ``every``); a tick with fewer than two
    runners up kills nothing, so one is always left. ``procs`` ends as the runners up.
    """
    kills = skipped = 0
    restarting: list[asyncio.Task[RunnerProcess]] = []
    next_kill = time.monotonic() + every
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_kill - time.monotonic())):
                    await stop.wait()
            if stop.is_set():
                return kills, skipped
            for task in [t for t in restarting if t.done()]:
                restarting.remove(task)
                procs.append(task.result())
            next_kill += every
            if len(procs) < 2:
                skipped += 1
                continue
            procs.pop(rng.randrange(len(procs))).kill()
            kills += 1
            restarting.append(asyncio.create_task(asyncio.to_thread(start, **RUNNER)))
    finally:
        procs.extend(await asyncio.gather(*restarting))


async def check_saga_tables(db: asyncpg.Connection,
                            planned: Sequence[tuple[str, SagaOrder]]) -> dict[str, int]:
    """Compare the effect, compensation and finalizer rows with :func:`expected_saga`;
    the counts of what differs (all 0 when right)."""
    effects = Counter((r["workflow_id"], r["step"])
                      for r in await db.fetch("SELECT workflow_id, step FROM saga_effects"))
    undone: defaultdict[str, list[int]] = defaultdict(list)
    kinds = Counter[str]()
    for r in await db.fetch("SELECT workflow_id, step, kind FROM saga_compensations ORDER BY id"):
        undone[r["workflow_id"]].append(r["step"])
        kinds[r["kind"]] += 1
    finals = Counter(r["workflow_id"]
                     for r in await db.fetch("SELECT workflow_id FROM saga_finalizers"))
    wanted_effects = Counter({(wid, step): 1 for wid, order in planned
                              for step in expected_saga(order)[0]})
    wanted_undone = {wid: expected_saga(order)[1] for wid, order in planned
                     if expected_saga(order)[1]}
    ids = {wid for wid, _ in planned}
    return {
        "effect duplicates": sum(n - 1 for n in effects.values() if n > 1),
        "effects missing": sum(1 for k in wanted_effects if k not in effects),
        "effects that must not exist": sum(1 for k in effects if k not in wanted_effects),
        "sagas with wrong compensations": sum(
            1 for wid in ids if undone.get(wid, []) != wanted_undone.get(wid, [])),
        "compensation rows not 'undo'": sum(n for k, n in kinds.items() if k != "undo"),
        "sagas not finalized once": sum(1 for wid in ids if finals.get(wid) != 1),
        "finalizers of unknown sagas": sum(1 for wid in finals if wid not in ids),
    }


async def check_saga_results(handles: Sequence[Any],
                             planned: Sequence[tuple[str, SagaOrder]]) -> list[str]:
    """What ``handle.result()`` says, for every saga; the mismatches."""
    wrong: list[str] = []
    orders = dict(planned)
    for handle in handles:
        order = orders[handle.id]
        if order.fail_at is None:
            result = await handle.result(timeout=10)
            if result != [1, 2, 3, 4, 5]:
                wrong.append(f"{handle.id}: {result!r}")
            continue
        try:
            result = await handle.result(timeout=10)
        except covey.WorkflowError as exc:
            details = exc.details
            if (exc.reason is not Reason.WORKFLOW_FAILED or details.get("state") != "compensated"
                    or details.get("compensation_errors") or
                    "declined" not in str(details.get("message"))):
                wrong.append(f"{handle.id}: {exc.reason} {details}")
        else:
            wrong.append(f"{handle.id}: returned {result!r} instead of failing")
    return wrong


@pytest.mark.timeout(240)
async def test_sagas_exactly_once_while_a_runner_is_killed_every_3_s(  # type: ignore[no-untyped-def]
    start, caller: tuple[covey.Cluster, Defs], db: asyncpg.Connection
) -> None:
    cluster, defs = caller
    procs = await start_live(start, cluster, 3, **RUNNER)
    planned = saga_plan(SAGAS)
    ids = [wid for wid, _ in planned]
    began = time.monotonic()
    stop = asyncio.Event()
    killing = asyncio.create_task(kill_every(procs, start, KILL_EVERY, stop, random.Random(12)))
    try:
        handles = await start_paced(cluster, defs["saga"], planned, SAGA_SPREAD)
        started_s = time.monotonic() - began
        # the finalizer runs when a saga ends: one row per saga means every one ended
        await wait_until(lambda: db.fetchval(
            "SELECT count(DISTINCT workflow_id) = $1 FROM saga_finalizers", SAGAS),
            timeout=150, interval=0.2)
        ended_s = time.monotonic() - began
    finally:
        stop.set()
        kills, skipped = await killing
    states = await all_ended(cluster, "saga", ids)
    await asyncio.sleep(1.0)  # a late duplicate, if any, would land now
    problems = await check_saga_tables(db, planned)
    runs = await db.fetchval("SELECT count(*) FROM step_runs")  # committed or not
    committed = await db.fetchval("SELECT count(*) FROM saga_effects")
    state_counts = Counter(states.values())
    print(f"\nsagas: {SAGAS} started in {started_s:.1f} s, all ended after {ended_s:.1f} s; "
          f"{kills} SIGKILLs (every {KILL_EVERY:.0f} s, {skipped} ticks skipped); "
          f"states {dict(state_counts)}; "
          f"step runs {runs} for {committed} committed effects "
          f"(+{SAGAS // 10} declined); {problems}")
    wrong_states = {wid: st for (wid, order), st in zip(planned, states.values(), strict=True)
                    if st != expected_saga(order)[2]}
    assert wrong_states == {}, list(wrong_states.items())[:10]
    assert all(n == 0 for n in problems.values()), problems
    # a tick finding fewer than two runners up (replacements slow to start) kills nothing
    assert kills >= int(SAGA_SPREAD // KILL_EVERY) - 2, (kills, skipped)
    wrong = await check_saga_results(handles, planned)
    assert wrong == [], wrong[:10]
    journal = await cluster.workflows.journal(ids[0])  # a failing saga (n = 0)
    print(f"journal of {ids[0]}: {[(e.key, e.kind, e.status) for e in journal]}")
    # steps in call order, then compensations in the order they ran, then the finalizer
    assert [(e.key, e.status) for e in journal] == [
        *((f"step#{n}", "done") for n in range(1, FAIL_AT)), (f"step#{FAIL_AT}", "failed"),
        *((f"step#{n}:compensate", "done") for n in range(FAIL_AT, 0, -1)),
        ("finalizer:saga_finalize", "done"),
    ]


# -- 2. gather under kills -------------------------------------------------------------

INTERRUPTIONS = 100  # executions whose runner is SIGKILLed during their gather
FANOUT_BATCH = 45
BUSY_ENOUGH = 10  # in-flight gathers on one runner worth a kill
IN_FLIGHT = """
SELECT r.pid, count(DISTINCT r.workflow_id) AS n, array_agg(DISTINCT r.workflow_id) AS ids
FROM step_runs r
WHERE r.workflow_id = ANY($1::text[]) AND r.pid = ANY($2::int[])
  AND (SELECT count(*) FROM fanout_effects e WHERE e.workflow_id = r.workflow_id) < 3
GROUP BY r.pid
"""
COMMITTED = ("SELECT workflow_id, array_agg(branch) AS branches FROM fanout_effects"
             " WHERE workflow_id = ANY($1::text[]) GROUP BY workflow_id")


def fanout_plan(batch: int, size: int, rng: random.Random) -> list[tuple[str, Fanout]]:
    return [(f"fanout-{batch:02d}-{i:02d}",
             Fanout(delays_ms=[rng.randint(100, 300) for _ in range(3)]))
            for i in range(size)]


async def busiest(db: asyncpg.Connection, procs: Sequence[RunnerProcess],
                  ids: Sequence[str]) -> int | None:
    """The index in ``procs`` of the runner running most gathers of ``ids``, once one
    runs ``BUSY_ENOUGH`` (or, after 5 s, whichever runs most; None: none runs any)."""
    by_pid = {p.pid: i for i, p in enumerate(procs)}
    deadline = time.monotonic() + 5.0
    while True:
        rows = await db.fetch(IN_FLIGHT, list(ids), list(by_pid))
        top = max(rows, key=lambda r: r["n"], default=None)
        if top is not None and (top["n"] >= BUSY_ENOUGH or time.monotonic() > deadline):
            return by_pid[top["pid"]]
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.02)


@pytest.mark.timeout(240)
async def test_gathers_interrupted_by_sigkill_recover_on_another_runner(  # type: ignore[no-untyped-def]
    start, caller: tuple[covey.Cluster, Defs], db: asyncpg.Connection
) -> None:
    cluster, defs = caller
    procs = await start_live(start, cluster, 3, **RUNNER)
    rng = random.Random(21)
    planned: dict[str, Fanout] = {}
    # one per execution whose runner died during its gather: (workflow id, pid of
    # the killed runner, branches committed when it died, last step_runs id before)
    interrupted: list[tuple[str, int, frozenset[int], int]] = []
    began = time.monotonic()
    batch = kills = 0
    while len(interrupted) < INTERRUPTIONS:
        assert batch < 30, f"only {len(interrupted)} gathers interrupted in {batch} batches"
        plan = fanout_plan(batch, FANOUT_BATCH, rng)
        planned.update(plan)
        batch += 1
        await asyncio.gather(*(start_workflow(cluster, defs["fanout"], payload, wid)
                               for wid, payload in plan))
        index = await busiest(db, procs, [wid for wid, _ in plan])
        if index is None:  # the whole batch ran its gathers before a look: next batch
            continue
        victim = procs[index]
        mark = await db.fetchval("SELECT coalesce(max(id), 0) FROM step_runs")
        victim.kill()
        kills += 1
        await sessions_gone(db, victim)
        rows = await db.fetch(IN_FLIGHT, list(planned), [victim.pid])
        hit = sorted(rows[0]["ids"]) if rows else []
        committed = {r["workflow_id"]: frozenset(r["branches"])
                     for r in await db.fetch(COMMITTED, hit)}
        interrupted.extend((wid, victim.pid, committed.get(wid, frozenset()), mark)
                           for wid in hit)
        procs[index] = await asyncio.to_thread(start, **RUNNER)
    killed_s = time.monotonic() - began
    ids = sorted(planned)
    states = await all_ended(cluster, "fanout", ids)
    ended_s = time.monotonic() - began
    await asyncio.sleep(1.0)  # a late duplicate, if any, would land now
    parked = await cluster.workflows.list(state="failed_nondeterministic", limit=1000)
    effects = Counter((r["workflow_id"], r["branch"]) for r in await db.fetch(
        "SELECT workflow_id, branch FROM fanout_effects"))
    # every branch run, committed or not: (workflow id, branch) -> [(id, pid)]
    ran: defaultdict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for r in await db.fetch("SELECT id, workflow_id, step, pid FROM step_runs"):
        ran[(r["workflow_id"], int(r["step"].removeprefix("branch")))].append((r["id"], r["pid"]))
    runs = sum(len(v) for v in ran.values())
    hit_ids = {i[0] for i in interrupted}
    # runs again of branches whose runner was not killed (rebalancing onto a new runner)
    moved = sum(len(v) - 1 for (wid, _), v in ran.items() if wid not in hit_ids)
    state_counts = Counter(states.values())
    print(f"\ngather: {len(ids)} executions in {batch} batches, {kills} SIGKILLs, "
          f"{len(interrupted)} interrupted during their gather "
          f"({len(hit_ids)} executions) in {killed_s:.1f} s; "
          f"all ended after {ended_s:.1f} s; states {dict(state_counts)}; {len(parked)} parked; "
          f"branch runs {runs} for {sum(effects.values())} effects ({moved} of executions "
          f"not interrupted)")
    assert parked == []
    assert state_counts == Counter({"completed": len(ids)}), state_counts
    assert len(interrupted) >= INTERRUPTIONS
    assert sorted(effects) == sorted((wid, b) for wid in ids for b in range(3))
    assert set(effects.values()) == {1}, [k for k, n in effects.items() if n > 1][:10]
    # a branch the killed runner had committed is replayed from the journal: no other
    # runner ran it after the kill; every other branch ran again, on another runner
    rerun_done, not_rerun = [], []
    for wid, pid, done, mark in interrupted:
        for b in range(3):
            elsewhere = [p for run_id, p in ran[(wid, b)] if run_id > mark and p != pid]
            if b in done and elsewhere:
                rerun_done.append((wid, b, elsewhere))
            if b not in done and not elsewhere:
                not_rerun.append((wid, b))
    assert rerun_done == [], rerun_done[:10]
    assert not_rerun == [], not_rerun[:10]
    for wid in sorted(hit_ids)[:20]:
        delays = planned[wid].delays_ms
        result = await cluster.workflows.handle(wid).result(timeout=10)
        assert result == [b * 1000 + d for b, d in enumerate(delays)], (wid, result)


# -- 3. versioning ---------------------------------------------------------------------


async def wait_state(caller: covey.Cluster, workflow_id: str, state: str) -> covey.WorkflowStatus:
    found: list[covey.WorkflowStatus] = []

    async def reached() -> bool:
        found.append(await caller.workflows.handle(workflow_id).status())
        return found[-1].state == state

    await wait_until(reached, timeout=30, interval=0.1)
    return found[-1]


@pytest.mark.timeout(180)
async def test_patched_keeps_old_executions_on_the_old_path(  # type: ignore[no-untyped-def]
    start, caller: tuple[covey.Cluster, Defs], db: asyncpg.Connection
) -> None:
    cluster, defs = caller
    began = time.monotonic()
    v1 = await start_live(start, cluster, 2, WF_APP_VERSION="1", **RUNNER)
    old = await start_workflow(cluster, defs["versioned"], Flow(label="old"), "flow-v1")
    waiting = await wait_state(cluster, old.id, "waiting")
    # every runner of version 1 goes (SIGTERM: they stop as a deployment stops them)
    await asyncio.gather(*(asyncio.to_thread(proc.terminate) for proc in v1))
    await start_live(start, cluster, 2, WF_APP_VERSION="2", **RUNNER)
    new = await start_workflow(cluster, defs["versioned"], Flow(label="new"), "flow-v2")
    await wait_state(cluster, new.id, "waiting")
    assert (await old.status()).state == "waiting"
    await cluster.send(old.id, "go", "go-old", idempotency_key="go-old")
    await cluster.send(new.id, "go", "go-new", idempotency_key="go-new")
    old_result = await old.result(timeout=30)
    new_result = await new.result(timeout=30)
    rows = Counter((r["workflow_id"], r["step"], r["app_version"]) for r in await db.fetch(
        "SELECT workflow_id, step, app_version FROM version_steps"))
    old_journal = await cluster.workflows.journal(old.id)
    new_journal = await cluster.workflows.journal(new.id)
    print(f"\nversioning ({time.monotonic() - began:.1f} s): v1 execution waited as "
          f"{waiting.waiting_for!r}, returned {old_result!r}; v2 execution returned "
          f"{new_result!r}; steps {dict(rows)}")
    assert old_result == "plain:go-old"
    assert new_result == "extra:go-new"
    assert rows == Counter({
        ("flow-v1", "first", 1): 1, ("flow-v1", "last", 2): 1,  # extra never ran for it
        ("flow-v2", "first", 2): 1, ("flow-v2", "extra", 2): 1, ("flow-v2", "last", 2): 1,
    })
    assert [e.kind for e in old_journal].count("patch") == 0
    assert [e.kind for e in new_journal].count("patch") == 1
    assert (await old.status()).state == (await new.status()).state == "completed"


# -- 4. durable sleep ------------------------------------------------------------------

SLEEPERS = 200
NAP = 1.0
ASLEEP = """
SELECT b.pid, array_agg(b.workflow_id) AS ids FROM sleep_marks b
WHERE b.mark = 'before' AND b.pid = ANY($1::int[]) AND NOT EXISTS (
    SELECT 1 FROM sleep_marks a WHERE a.workflow_id = b.workflow_id AND a.mark = 'after')
GROUP BY b.pid
"""


@pytest.mark.timeout(180)
async def test_durable_sleep_survives_the_sigkill_of_its_runner(  # type: ignore[no-untyped-def]
    start, caller: tuple[covey.Cluster, Defs], db: asyncpg.Connection
) -> None:
    cluster, defs = caller
    procs = await start_live(start, cluster, 2, **RUNNER)
    ids = [f"sleeper-{n:03d}" for n in range(SLEEPERS)]
    began = time.monotonic()
    await asyncio.gather(*(start_workflow(cluster, defs["sleeper"], Nap(seconds=NAP), wid)
                           for wid in ids))
    await wait_until(lambda: db.fetchval(
        "SELECT count(*) = $1 FROM sleep_marks WHERE mark = 'before'", SLEEPERS),
        timeout=30, interval=0.02)
    asleep = {r["pid"]: r["ids"] for r in await db.fetch(ASLEEP, [p.pid for p in procs])}
    victim = max(procs, key=lambda p: len(asleep.get(p.pid, [])))
    victim.kill()
    await sessions_gone(db, victim)
    rows = await db.fetch(ASLEEP, [victim.pid])
    killed_asleep = set(rows[0]["ids"]) if rows else set()
    states = await all_ended(cluster, "sleeper", ids)
    ended_s = time.monotonic() - began
    await asyncio.sleep(1.0)  # a late duplicate, if any, would land now
    marks = await db.fetch("SELECT workflow_id, mark, pid, at FROM sleep_marks")
    seen = Counter((r["workflow_id"], r["mark"]) for r in marks)
    at = {(r["workflow_id"], r["mark"]): r["at"] for r in marks}
    woke_on = {r["workflow_id"]: r["pid"] for r in marks if r["mark"] == "after"}
    slept = [(at[(w, "after")] - at[(w, "before")]).total_seconds() for w in ids]
    print(f"\ndurable sleep: {SLEEPERS} executions sleeping {NAP} s on 2 runners; "
          f"{len(killed_asleep)} asleep on the SIGKILLed runner; all ended after {ended_s:.1f} s; "
          f"states {dict(Counter(states.values()))}; before->after {min(slept):.2f}.."
          f"{max(slept):.2f} s")
    assert set(states.values()) == {"completed"}
    assert seen == Counter({(w, m): 1 for w in ids for m in ("before", "after")})
    assert len(killed_asleep) >= 1
    assert all(woke_on[w] != victim.pid for w in killed_asleep)
    # never early: the runner and the server share this machine's clock (50 ms of slack
    # for a timer that rounds)
    assert min(slept) >= NAP - 0.05, min(slept)
    for wid in ids[:10]:
        before_pid, after_pid = await cluster.workflows.handle(wid).result(timeout=10)
        assert (before_pid, after_pid) == (_pid(marks, wid, "before"), _pid(marks, wid, "after"))


def _pid(marks: Sequence[asyncpg.Record], workflow_id: str, mark: str) -> int:
    return next(int(r["pid"]) for r in marks if r["workflow_id"] == workflow_id
                and r["mark"] == mark)

