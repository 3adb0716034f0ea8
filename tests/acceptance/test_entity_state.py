"""Durable entity state and exactly-once effects on PostgreSQL, real runner processes.

Three ``covey run tests.acceptance.state_app:cluster`` processes; this test is
the client-only caller. Every deposit adds to an account's durable balance and
inserts one row into ``deposits`` through ``ctx.transaction``. That table has
no unique constraint, so each deposit shows exactly once only if covey commits
the state, the row and the reply in one fenced transaction, whatever happens to
the runner between running the handler and committing:

* a random runner is SIGKILLed and restarted every 3 s for 45 s under 10,000
  deposits over 500 accounts;
* every covey session of one runner is terminated (``pg_terminate_backend``),
  three times, under 3,000 deposits.

Both check that every call succeeded (a retryable error is retried with the same
deposit id), that each stored balance (``cluster.state_of``) equals the sum of
its deposits and that ``deposits`` holds one row per deposit: 0 duplicates, 0
missing. The handler-run count (counted outside covey's transaction, so it may
exceed the deposits) is printed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

import covey

from ._harness import RunnerProcess, start_live, wait_until
from .conftest import client_config
from .state_app import SCHEMA, Account, Deposit

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.state_app:cluster"
CONCURRENCY = 48  # calls under way at once
ATTEMPTS = 20  # per deposit; every attempt carries the same deposit id
CALL_TIMEOUT = 60.0
# Each runner's covey pool: smaller than the default 10, so three runners, their
# replacements and other tests stay well inside the server's max_connections.
RUNNER = {"app": APP, "COVEY_STORAGE_POOL_SIZE": "6"}
# Every covey session of one runner: ``covey-<role>:<runner address>``.
TERMINATE = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
             " WHERE datname = current_database() AND application_name LIKE 'covey-%:' || $1")
LOCK_SESSION = ("SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'covey-lock:' || $1")

Start = Callable[..., RunnerProcess]


@dataclass(frozen=True)
class Planned:
    deposit_id: str
    account: str
    amount: int


def plan(count: int, accounts: int, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    return [Planned(f"d{n:05d}", f"acct-{rng.randrange(accounts):03d}", rng.randint(1, 100))
            for n in range(count)]


@dataclass
class Load:
    """The caller: ``CONCURRENCY`` deposits under way, paced over ``spread`` seconds."""

    done: int = 0
    retried: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    async def run(self, caller: covey.Cluster, planned: list[Planned], spread: float) -> None:
        todo = iter(enumerate(planned))
        started = time.monotonic()

        async def worker() -> None:
            for n, deposit in todo:
                # Paced so the load lasts as long as the faults do; a slot missed
                # (calls stalled by a failover) is sent at once.
                await asyncio.sleep(max(0.0, started + spread * n / len(planned)
                                        - time.monotonic()))
                await self.send(caller, deposit)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def send(self, caller: covey.Cluster, deposit: Planned) -> None:
        account = caller.client(Account, deposit.account, timeout=CALL_TIMEOUT)
        cmd = Deposit(deposit_id=deposit.deposit_id, amount=deposit.amount)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                balance = await account.deposit(cmd)
            except covey.ClusterError as exc:
                if exc.retryable and attempt < ATTEMPTS:
                    self.retried[str(exc.reason)] += 1
                    await asyncio.sleep(0.05 * attempt)  # backoff before the retry
                    continue
                self.failures.append(f"{deposit.deposit_id}: {exc!r}")
                return
            if balance < deposit.amount:
                self.failures.append(f"{deposit.deposit_id}: balance {balance} after the deposit")
            self.done += 1
            return


@dataclass(frozen=True)
class Outcome:
    rows: int
    duplicates: int
    missing: int
    wrong: int
    runs: int
    unprocessed: int
    balances_off: list[str]

    def describe(self, deposits: int) -> str:
        return (f"{deposits} deposits: {self.rows} rows in deposits, {self.duplicates} "
                f"duplicates, {self.missing} missing; handler runs {self.runs} "
                f"({self.runs - deposits} re-runs)")


async def outcome(url: str, caller: covey.Cluster, planned: list[Planned]) -> Outcome:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT deposit_id, account, amount FROM deposits")
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM (SELECT deposit_id FROM deposits"
            " GROUP BY deposit_id HAVING count(*) > 1) AS twice")
        runs = await conn.fetchval("SELECT count(*) FROM deposit_runs")
        unprocessed = await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE NOT processed")
    finally:
        await conn.close()
    expected = {p.deposit_id: (p.account, p.amount) for p in planned}
    stored = {r["deposit_id"]: (r["account"], r["amount"]) for r in rows}
    sums: defaultdict[str, int] = defaultdict(int)
    for p in planned:
        sums[p.account] += p.amount
    accounts = sorted(sums)
    states = await asyncio.gather(*(caller.state_of(Account, a) for a in accounts))
    off = [f"{a}: stored {s.balance if s else None}, deposits sum to {sums[a]}"
           for a, s in zip(accounts, states, strict=True)
           if s is None or s.balance != sums[a]]
    return Outcome(
        rows=len(rows), duplicates=int(duplicates), missing=len(expected.keys() - stored.keys()),
        wrong=sum(1 for k, v in stored.items() if expected.get(k) != v),
        runs=int(runs), unprocessed=int(unprocessed), balances_off=off,
    )


def assert_exactly_once(load: Load, result: Outcome, deposits: int) -> None:
    assert load.failures == [], load.failures[:10]
    assert load.done == deposits
    assert result.balances_off == [], result.balances_off[:10]
    assert (result.rows, result.duplicates, result.missing, result.wrong) == (deposits, 0, 0, 0)
    assert result.unprocessed == 0
    assert result.runs >= deposits


@pytest.fixture
async def caller(fresh_pg_database: str) -> AsyncIterator[covey.Cluster]:
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    cluster = covey.Cluster(client_config(fresh_pg_database), client_only=True)
    cluster.register(Account)
    async with cluster:
        yield cluster


async def three_runners(start: Start, caller: covey.Cluster) -> list[RunnerProcess]:
    return await start_live(start, caller, 3, **RUNNER)


async def kill_and_restart(procs: list[RunnerProcess], start: Start, every: float,
                           until: float, rng: random.Random) -> int:
    """SIGKILL a random runner every ``every`` s and start a new one in its place."""
    kills = 0
    next_kill = time.monotonic() + every
    while next_kill < until:
        await asyncio.sleep(max(0.0, next_kill - time.monotonic()))  # the schedule itself
        victim = rng.randrange(len(procs))
        procs[victim].kill()
        kills += 1
        procs[victim] = await asyncio.to_thread(start, **RUNNER)  # waits for "ready"
        next_kill += every
    return kills


@pytest.mark.timeout(240)
async def test_10000_deposits_exactly_once_while_runners_are_killed_every_3_s(  # type: ignore[no-untyped-def]
    start, caller: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await three_runners(start, caller)
    planned = plan(10_000, 500, seed=10)
    load = Load()
    began = time.monotonic()
    sending = asyncio.create_task(load.run(caller, planned, spread=42.0))
    kills = await kill_and_restart(procs, start, every=3.0, until=began + 45.0,
                                   rng=random.Random(3))
    await sending
    elapsed = time.monotonic() - began
    result = await outcome(fresh_pg_database, caller, planned)
    print(f"\nSIGKILL every 3 s: {kills} kills and restarts in {elapsed:.1f} s; "
          f"{result.describe(len(planned))}; client retries {dict(load.retried)}")
    assert kills >= 13
    assert_exactly_once(load, result, len(planned))


@pytest.mark.timeout(150)
async def test_3000_deposits_exactly_once_while_runner_sessions_are_terminated(  # type: ignore[no-untyped-def]
    start, caller: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await three_runners(start, caller)
    planned = plan(3_000, 500, seed=30)
    load = Load()
    sending = asyncio.create_task(load.run(caller, planned, spread=15.0))
    conn = await asyncpg.connect(fresh_pg_database)
    terminated: list[int] = []
    try:
        for n, victim in enumerate(procs):
            await wait_until(lambda: load.done >= (n + 1) * 700,  # noqa: B023 - live count
                             timeout=90, interval=0.01)
            terminated.append(await conn.fetchval(TERMINATE, victim.address))
        await sending

        async def locks_back() -> bool:  # each runner took its lock session again
            counts = [await conn.fetchval(LOCK_SESSION, p.address) for p in procs]
            return counts == [1, 1, 1]

        await wait_until(locks_back, timeout=60, interval=0.1)
    finally:
        if not sending.done():
            sending.cancel()
        await conn.close()
    result = await outcome(fresh_pg_database, caller, planned)
    print(f"\npg_terminate_backend: sessions terminated {terminated}; "
          f"{result.describe(len(planned))}; client retries {dict(load.retried)}")
    assert all(count >= 2 for count in terminated), terminated  # lock + listen at least
    assert all(p.process.poll() is None for p in procs), "a runner died"
    assert_exactly_once(load, result, len(planned))
