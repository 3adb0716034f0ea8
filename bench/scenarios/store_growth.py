"""Store growth: is covey as fast on a store holding millions of processed messages?

Two scratch PostgreSQL databases on the same server, 300 shards, library
defaults: one empty, one filled with ``ROWS`` processed messages (5,000,000;
200,000 with ``--quick``) before anything is measured. Each is measured in turn,
alternating (empty, large, empty, large: ``ROUNDS`` rounds; one with
``--quick``), each figure the best of its rounds, so neither store is favoured by
going first or by a burst of other load on the shared machine:

* ``persisted-rpc`` throughput: ``Bench.put`` (persisted) and ``Bench.put_keyed``
  (persisted, deduplicated by a fresh primary key), 64 callers over a fixed
  window, two runner processes (``persisted_rpc.put_call`` and
  ``volatile_rpc.throughput``);
* ``jobs-latency``: submit -> handler start of jobs submitted one at a time on
  idle runners (``jobs_latency.measure``).

The fill is one ``INSERT … SELECT generate_series``: rows shaped like real
processed messages (ids below the live snowflakes, all 300 shards, five entity
types among them ``Bench`` and ``covey.Job``, a dedupe key on 30 %, completed
over the last six days, so younger than the default retention and left alone by
the runners' own purge) and dead-lettered jobs (every ``DEAD_EVERY``-th row, when
it is a job). Unprocessed messages are left out of the comparison (each storage
read walks the pending delayed messages of its shards, a cost of the backlog, not
of the history); ``UNPROCESSED`` delayed ones (due in 30 days) are added before
the purge, to show it leaves them. No VACUUM
or ANALYZE follows (this server runs with autovacuum off): plans must not depend
on statistics. A CHECKPOINT after the fill keeps its write-back out of the
measurement.

``rpc_ratio`` = large-store calls/s / empty-store calls/s and ``job_start_ratio``
= empty-store start p50 / large-store start p50: 1.0 means no slow-down; >= 0.85
is the target for both. The per-round figures are in ``rounds``. On a shared
machine those timings move with other load; ``*_blocks_per_message`` (buffer
accesses per inserted message, from ``pg_stat_database``, in each phase) does
not, so ``rpc_blocks_ratio`` / ``jobs_blocks_ratio`` (large / empty; 1.0: the
database does no more work per message on the large store) show whether a gap
in the timings is the store's doing.

Then a purge pass with retention 0 (``purge_processed``, the function the
runners' retention loop runs, batches of ``StorageOptions().purge_batch``) on
the large store with its runners stopped: ``purge_left_processed`` counts
processed messages older than the cut-off still there (dead letters excepted:
they are kept by design, ``purge_kept_dead_letters``), ``purge_lost_unprocessed``
unprocessed messages that went missing; both must be 0. ``purge_s`` is the
pass's duration.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from covey.core import CoveyConfig, StorageOptions
from covey.jobs._definition import JOB_ENTITY
from covey.sharding.runtime import purge_processed
from covey.storage import open_storage

from . import jobs_latency
from ._runners import SHARDS, cluster_of_two, log, scratch_database, server_settings
from .persisted_rpc import put_call
from .volatile_rpc import CONCURRENCY, throughput

ROWS = 5_000_000
QUICK_ROWS = 200_000
UNPROCESSED = 1_000
DEAD_EVERY = 5_000
ROUNDS = 2
TYPES = ("Bench", JOB_ENTITY, "Account", "Order", "covey.Cron")
TAGS = ("put", "stamp", "deposit", "place", "tick")
FILL = f"""
INSERT INTO covey.messages (id, entity_type, entity_id, shard_group, shard, tag, payload,
    headers, primary_key, dedupe_key, priority, attempts, starts, created_at, processed,
    processed_at, reply, reply_is_error)
SELECT g, t.entity_type, t.entity_id, 'default', 1 + g % {SHARDS}, t.tag,
    '\\x81a36b6579a46b313233a464617461d92078787878787878787878787878787878787878787878787878787878787878'::bytea,
    '{{}}', t.pk, CASE WHEN t.pk IS NOT NULL
        THEN t.entity_type || '/' || t.entity_id || '/' || t.tag || '/' || t.pk END,
    0, 1, 1, t.done - 0.004, true, t.done, '\\x81a1720c'::bytea,
    t.entity_type = '{JOB_ENTITY}' AND g % {DEAD_EVERY} = 1
FROM generate_series(1, $1::int8) AS g,
LATERAL (SELECT ($2::text[])[(1 + g % 5)::int] AS entity_type, 'e' || (g % 100000) AS entity_id,
                ($3::text[])[(1 + g % 5)::int] AS tag,
                CASE WHEN g % 10 < 3 THEN 'k' || g END AS pk,
                $4::float8 - 6 * 86400 * (1 - g::float8 / $1) AS done) AS t
"""
PENDING = f"""
INSERT INTO covey.messages (id, entity_type, entity_id, shard_group, shard, tag, payload,
    deliver_at, created_at)
SELECT $1::int8 + g, 'Order', 'o' || g, 'default', 1 + g % {SHARDS}, 'remind', '\\x80'::bytea,
    $2::float8 + 30 * 86400, $2::float8 - 86400
FROM generate_series(1, $3::int8) AS g
"""
STATS_SQL = ("SELECT blks_hit, blks_read, tup_inserted FROM pg_stat_database"
             " WHERE datname = current_database()")
UNPROCESSED_SQL = "SELECT count(*) FROM covey.messages WHERE NOT processed"
LEFT_SQL = (
    "SELECT count(*) FROM covey.messages WHERE processed AND processed_at < $1"
    f" AND NOT (reply_is_error AND entity_type = '{JOB_ENTITY}')"
)
DEAD_SQL = (
    f"SELECT count(*) FROM covey.messages WHERE entity_type = '{JOB_ENTITY}'"
    " AND processed AND reply_is_error"
)


def shape(quick: bool) -> tuple[int, float, float, int]:
    """(rows, throughput warm-up s, window s, jobs)."""
    return (QUICK_ROWS, 1.0, 3.0, 100) if quick else (ROWS, 2.0, 10.0, 500)


async def blocks_per_row(url: str, since: dict[str, int] | None = None) -> dict[str, int] | float:
    """Buffer accesses per inserted row in this database since ``since`` (a snapshot).

    Without ``since``: the snapshot. Every call and job inserts one message, so
    the figure is the database work per message, which CPU contention on a shared
    machine does not change (throughput does).
    """
    await asyncio.sleep(0.6)  # backends report their counters at most every 0.5 s
    conn = await asyncpg.connect(url)
    try:
        row = dict(await conn.fetchrow(STATS_SQL))
    finally:
        await conn.close()
    if since is None:
        return row
    inserted = max(row["tup_inserted"] - since["tup_inserted"], 1)
    touched = row["blks_hit"] + row["blks_read"] - since["blks_hit"] - since["blks_read"]
    return round(touched / inserted, 1)


async def measure(url: str, quick: bool) -> dict[str, Any]:
    """persisted-rpc throughput (plain and keyed) and jobs-latency on one store."""
    _, warmup, window, jobs = shape(quick)
    result: dict[str, Any] = {}
    snapshot = await blocks_per_row(url)
    assert isinstance(snapshot, dict)
    async with cluster_of_two(url) as (_, caller):
        for prefix, keyed in (("", False), ("keyed_", True)):
            part = await throughput(put_call(caller, keyed), warmup, window)
            log(f"  {prefix or 'plain '}persisted: {part['calls_per_s']} calls/s")
            result[f"{prefix}calls_per_s"] = part["calls_per_s"]
    result["rpc_blocks_per_message"] = await blocks_per_row(url, snapshot)
    snapshot = await blocks_per_row(url)
    assert isinstance(snapshot, dict)
    latency = await jobs_latency.measure(url, jobs)
    result["jobs_blocks_per_message"] = await blocks_per_row(url, snapshot)
    result.update({k: v for k, v in latency.items() if k.startswith(("start_", "done_"))})
    log(f"  database work: {result['rpc_blocks_per_message']} blocks per rpc message, "
        f"{result['jobs_blocks_per_message']} per job message")
    return result


async def fill(conn: asyncpg.Connection, rows: int) -> dict[str, Any]:
    started = time.monotonic()
    now = time.time()
    await conn.execute(FILL, rows, list(TYPES), list(TAGS), now)
    await conn.execute("CHECKPOINT")
    fill_s = time.monotonic() - started
    size = await conn.fetchval("SELECT pg_total_relation_size('covey.messages')")
    log(f"  {rows} processed rows in {fill_s:.1f} s, {size / 2**20:.0f} MiB with indexes")
    return {"fill_s": round(fill_s, 1), "store_mib": round(size / 2**20)}


async def purge(url: str, conn: asyncpg.Connection) -> dict[str, Any]:
    """A purge pass with retention 0 on the stopped cluster, and what it left."""
    await conn.execute(PENDING, await conn.fetchval("SELECT max(id) FROM covey.messages"),
                       time.time(), UNPROCESSED)
    unprocessed = await conn.fetchval(UNPROCESSED_SQL)
    total = await conn.fetchval("SELECT count(*) FROM covey.messages")
    batch = StorageOptions().purge_batch
    storage = open_storage(CoveyConfig(database_url=url, shards=SHARDS))
    async with storage:
        before = time.time()
        started = time.monotonic()
        purged = await purge_processed(storage.messages, before, batch=batch,
                                       keep_errors_of=(JOB_ENTITY,))
        purge_s = time.monotonic() - started
    result = {
        "purge_rows_before": total, "purged": purged, "purge_batch": batch,
        "purge_s": round(purge_s, 2), "purge_rows_per_s": round(purged / purge_s),
        "purge_left_processed": await conn.fetchval(LEFT_SQL, before),
        "purge_lost_unprocessed": unprocessed - await conn.fetchval(UNPROCESSED_SQL),
        "purge_kept_dead_letters": await conn.fetchval(DEAD_SQL),
    }
    log(f"  {result}")
    return result


async def migrate(url: str) -> None:
    """Create covey's schema (and record the shard count) in an empty database."""
    async with open_storage(CoveyConfig(database_url=url, shards=SHARDS)):
        pass


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the best round: highest calls/s, lowest latency."""
    return {key: (max if key.endswith("calls_per_s") else min)(r[key] for r in rounds)
            for key in rounds[0]}  # blocks per message: the least too (the least noise)


async def run(quick: bool) -> dict[str, Any]:
    rows = shape(quick)[0]
    settings = await server_settings()
    measured: dict[str, list[dict[str, Any]]] = {"empty": [], "large": []}
    async with scratch_database() as empty_url, scratch_database() as large_url:
        await migrate(empty_url)
        await migrate(large_url)
        conn = await asyncpg.connect(large_url)
        try:
            log(f"filling the large store with {rows} processed messages...")
            result = await fill(conn, rows)
            for n in range(1 if quick else ROUNDS):
                for store, url in (("empty", empty_url), ("large", large_url)):
                    log(f"round {n + 1}, {store} store: persisted-rpc and jobs-latency...")
                    measured[store].append(await measure(url, quick))
            log("purge pass with retention 0 on the large store...")
            result.update(await purge(large_url, conn))
        finally:
            await conn.close()
    empty, large = best(measured["empty"]), best(measured["large"])
    result.update({f"empty_{k}": v for k, v in empty.items()})
    result.update({f"large_{k}": v for k, v in large.items()})
    result.update(
        rpc_ratio=round(large["calls_per_s"] / empty["calls_per_s"], 2),
        keyed_rpc_ratio=round(large["keyed_calls_per_s"] / empty["keyed_calls_per_s"], 2),
        job_start_ratio=round(empty["start_p50_ms"] / large["start_p50_ms"], 2),
        rpc_blocks_ratio=round(large["rpc_blocks_per_message"]
                               / empty["rpc_blocks_per_message"], 2),
        jobs_blocks_ratio=round(large["jobs_blocks_per_message"]
                                / empty["jobs_blocks_per_message"], 2),
        rounds={store: [{k: r[k] for k in ("calls_per_s", "keyed_calls_per_s", "start_p50_ms",
                                            "rpc_blocks_per_message",
                                            "jobs_blocks_per_message")} for r in runs]
                for store, runs in measured.items()},
        rows=rows, unprocessed_rows=UNPROCESSED, dead_every=DEAD_EVERY,
        scenario="store-growth", quick=quick, concurrency=CONCURRENCY, shards=SHARDS,
        runners=2, cpus=os.cpu_count(), postgres=settings, target_ratio=0.85,
    )
    return result
