"""Domain events across runner processes on PostgreSQL: every committed event
handled once per group, in key order, while a runner is SIGKILLed.

Three ``covey run tests.acceptance.events_app:cluster`` processes; this test is
the client-only publisher. 20,000 ``OrderPlaced`` events over 200 keys, each
key's events published in order (one after the other; the keys in parallel):
half with ``cluster.publish(event)``, half inside the test's own asyncpg
transaction together with an ``orders`` row (``transaction=conn``), a tenth of
those rolled back. Two groups (``billing``, ``email``) each insert one row per
event into a table without a unique constraint. One runner is SIGKILLed (and
restarted) twice while the events are published.

Then, for each group: the handled events are exactly the committed ones (0
missing, 0 duplicates, none rolled back), and each key's rows are in publish
order. The handler-run count (outside covey's transaction) is printed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

import covey

from ._harness import RunnerProcess, start_live, wait_until
from .conftest import client_config
from .events_app import SCHEMA, OrderPlaced

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.events_app:cluster"
RUNNER = {"app": APP, "COVEY_STORAGE_POOL_SIZE": "6"}
GROUPS = ("billing", "email")
EVENTS = 20_000
KEYS = 200
PUBLISHERS = 40  # keys published at once (each key's events one after the other)

Start = Callable[..., RunnerProcess]


class RolledBack(Exception):
    """Raised inside an app transaction to roll it back."""


@pytest.fixture
async def publisher(fresh_pg_database: str) -> AsyncIterator[covey.Cluster]:
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    async with covey.Cluster(client_config(fresh_pg_database), client_only=True) as cluster:
        yield cluster


class Publishing:
    """Publishes every key's events in order; remembers what committed."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.committed: dict[str, list[int]] = defaultdict(list)  # key -> seqs, in order
        self.rolled_back: set[tuple[str, int]] = set()
        self.done = 0
        self.ways: Counter[str] = Counter()

    async def run(self, caller: covey.Cluster) -> None:
        keys = [f"key-{k:03d}" for k in range(KEYS)]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for key in keys:
            queue.put_nowait(key)
        per_key = EVENTS // KEYS
        pool = await asyncpg.create_pool(self.url, min_size=PUBLISHERS, max_size=PUBLISHERS)
        try:
            async def worker() -> None:
                while not queue.empty():
                    key = queue.get_nowait()
                    async with pool.acquire() as conn:
                        for seq in range(per_key):
                            await self.publish(caller, conn, key, seq)

            await asyncio.gather(*(worker() for _ in range(PUBLISHERS)))
        finally:
            await pool.close()

    async def publish(self, caller: covey.Cluster, conn: asyncpg.Connection,
                      key: str, seq: int) -> None:
        event = OrderPlaced(key=key, seq=seq)
        roll = self.rng.random()
        if roll < 0.5:
            await caller.publish(event)
            self.ways["plain"] += 1
        else:
            rollback = roll >= 0.95  # a tenth of the transactional half
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders (key, seq) VALUES ($1, $2)", key, seq)
                    await caller.publish(event, transaction=conn)
                    if rollback:
                        raise RolledBack
            except RolledBack:
                self.rolled_back.add((key, seq))
                self.ways["rolled back"] += 1
                self.done += 1
                return
            self.ways["in transaction"] += 1
        self.committed[key].append(seq)
        self.done += 1


async def three_runners(start: Start, caller: covey.Cluster) -> list[RunnerProcess]:
    return await start_live(start, caller, 3, **RUNNER)


async def kill_twice(procs: list[RunnerProcess], start: Start, load: Publishing,
                     rng: random.Random) -> int:
    kills = 0
    for fraction in (0.3, 0.6):
        await wait_until(lambda f=fraction: load.done >= EVENTS * f, timeout=240,  # type: ignore[misc]
                         interval=0.05)
        victim = rng.randrange(len(procs))
        procs[victim].kill()
        kills += 1
        procs[victim] = await asyncio.to_thread(start, **RUNNER)  # waits for "ready"
    return kills


async def handled(conn: asyncpg.Connection, group: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        f"SELECT key, seq, event_id FROM {group}_effects ORDER BY id"))


@pytest.mark.timeout(420)
async def test_20000_events_two_groups_once_in_key_order_while_a_runner_is_killed_twice(  # type: ignore[no-untyped-def]
    start, publisher: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await three_runners(start, publisher)
    load = Publishing(fresh_pg_database, seed=11)
    began = time.monotonic()
    sending = asyncio.create_task(load.run(publisher))
    kills = await kill_twice(procs, start, load, random.Random(5))
    await sending
    published_s = time.monotonic() - began
    committed = {(key, seq) for key, seqs in load.committed.items() for seq in seqs}
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        async def all_handled() -> bool:
            counts = [await conn.fetchval(f"SELECT count(*) FROM {g}_effects") for g in GROUPS]
            return all(c >= len(committed) for c in counts)

        await wait_until(all_handled, timeout=240, interval=0.2)
        await asyncio.sleep(2.0)  # late duplicates, if any, would land now
        runs = await conn.fetchval("SELECT count(*) FROM event_runs")
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        results = {g: await handled(conn, g) for g in GROUPS}
    finally:
        await conn.close()
    print(f"\n{EVENTS} events over {KEYS} keys published in {published_s:.1f} s "
          f"({dict(load.ways)}); {kills} SIGKILLs; handler runs {runs}")
    assert kills == 2
    assert orders == load.ways["in transaction"]
    assert len(committed) + len(load.rolled_back) == EVENTS
    for group, rows in results.items():
        seen = Counter((r["key"], r["seq"]) for r in rows)
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        missing = committed - set(seen)
        phantom = set(seen) & load.rolled_back
        out_of_order = 0
        last: dict[str, int] = {}
        for r in rows:
            if r["seq"] <= last.get(r["key"], -1):
                out_of_order += 1
            last[r["key"]] = max(r["seq"], last.get(r["key"], -1))
        print(f"{group}: {len(rows)} rows, {duplicates} duplicates, {len(missing)} missing, "
              f"{len(phantom)} rolled-back handled, {out_of_order} out of key order")
        assert (duplicates, len(missing), len(phantom), out_of_order) == (0, 0, 0, 0), group
        assert len(rows) == len(committed)
