"""Domain events on the embedded SQLite store, in one process: every committed
event handled once per group, in key order, while runners crash.

Three in-process runners share one SQLite file (``TestCluster``). 2,000
``OrderPlaced`` events over 40 keys, each key's events published in order:
half with ``publish`` from a client member, half inside the application's own
``sqlite3`` transaction on covey's file together with an ``orders`` row
(``transaction=conn``), a tenth of those rolled back. Two groups insert one row
per event through ``ctx.transaction`` into tables without a unique constraint.
A runner is crashed (``TestCluster.kill``: no goodbye, no release) and replaced
twice while the events are published.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import covey
from covey.testing import TestCluster

EVENTS = 2_000
KEYS = 40
GROUPS = ("billing", "email")
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (key TEXT NOT NULL, seq INT NOT NULL);
CREATE TABLE IF NOT EXISTS billing_effects (key TEXT NOT NULL, seq INT NOT NULL);
CREATE TABLE IF NOT EXISTS email_effects (key TEXT NOT NULL, seq INT NOT NULL);
"""


class OrderPlaced(covey.Event, topic="sqlite.orders", key="key"):
    key: str
    seq: int


def declare(cluster: covey.Cluster) -> None:
    for group in GROUPS:
        def handler(table: str) -> object:
            async def handle(event: OrderPlaced, ctx: covey.EventContext) -> None:
                tx = await ctx.transaction()
                await tx.execute(f"INSERT INTO {table} (key, seq) VALUES (?, ?)",
                                 event.key, event.seq)
            return handle

        cluster.subscribe(OrderPlaced, group=group, start="earliest")(
            handler(f"{group}_effects"))  # type: ignore[arg-type]


class RolledBack(Exception):
    pass


async def test_events_once_per_group_in_key_order_on_sqlite_while_runners_crash(
        tmp_path: Path) -> None:
    db = tmp_path / "covey.db"
    rng = random.Random(3)
    committed: dict[str, list[int]] = defaultdict(list)
    rolled_back: set[tuple[str, int]] = set()
    ways: Counter[str] = Counter()
    async with TestCluster(runners=3, configure=declare,
                           database_url=f"sqlite:///{db}") as pods:
        await pods.storage.execute_script(SCHEMA)  # type: ignore[attr-defined]
        publisher = pods.client_member
        done = 0

        # the application's own connection to covey's file; one transaction at a time
        # (sqlite3 blocks the event loop while it waits for the file's write lock)
        app = sqlite3.connect(db, timeout=30, isolation_level=None)
        app_lock = asyncio.Lock()

        async def publish_key(key: str) -> None:
            nonlocal done
            for seq in range(EVENTS // KEYS):
                event = OrderPlaced(key=key, seq=seq)
                roll = rng.random()
                if roll < 0.5:
                    await publisher.publish(event)
                    ways["plain"] += 1
                else:
                    async with app_lock:
                        try:
                            app.execute("BEGIN IMMEDIATE")
                            app.execute("INSERT INTO orders VALUES (?, ?)", (key, seq))
                            await publisher.publish(event, transaction=app)
                            if roll >= 0.95:
                                raise RolledBack
                            app.execute("COMMIT")
                        except RolledBack:
                            app.execute("ROLLBACK")
                            rolled_back.add((key, seq))
                            ways["rolled back"] += 1
                            done += 1
                            continue
                    ways["in transaction"] += 1
                committed[key].append(seq)
                done += 1

        async def crash_twice() -> int:
            kills = 0
            for fraction in (0.3, 0.6):
                while done < EVENTS * fraction:  # noqa: ASYNC110 - a counter, polled
                    await asyncio.sleep(0.01)
                await pods.kill(rng.randrange(len(pods.runners)))
                await pods.add_runner()
                kills += 1
            return kills

        keys = [f"key-{k:02d}" for k in range(KEYS)]
        crashing = asyncio.create_task(crash_twice())
        # one key at a time per task, 8 tasks: each key's events stay in publish order
        queue = list(keys)

        async def worker() -> None:
            while queue:
                await publish_key(queue.pop())

        await asyncio.gather(*(worker() for _ in range(8)))
        kills = await crashing
        app.close()
        expected = {(k, s) for k, seqs in committed.items() for s in seqs}

        def rows(group: str) -> list[tuple[str, int]]:
            reader = sqlite3.connect(db, timeout=30)
            try:
                return reader.execute(
                    f"SELECT key, seq FROM {group}_effects ORDER BY rowid").fetchall()
            finally:
                reader.close()

        for _ in range(600):  # deliveries made in app transactions wait for a poll
            if all(len(rows(g)) >= len(expected) for g in GROUPS):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a late duplicate, if any, would land now
        results = {g: rows(g) for g in GROUPS}
        with sqlite3.connect(db) as reader:
            (orders,) = reader.execute("SELECT count(*) FROM orders").fetchone()

    print(f"\n{dict(ways)}; {kills} crashes")
    assert kills == 2
    assert orders == ways["in transaction"]
    assert len(expected) + len(rolled_back) == EVENTS
    for group, handled in results.items():
        seen = Counter(handled)
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        missing = expected - set(seen)
        phantom = set(seen) & rolled_back
        last: dict[str, int] = {}
        out_of_order = 0
        for key, seq in handled:
            if seq <= last.get(key, -1):
                out_of_order += 1
            last[key] = max(seq, last.get(key, -1))
        print(f"{group}: {len(handled)} rows, {duplicates} duplicates, {len(missing)} missing, "
              f"{len(phantom)} rolled-back handled, {out_of_order} out of key order")
        assert (duplicates, len(missing), len(phantom), out_of_order) == (0, 0, 0, 0), group
