"""Singletons, cron and request context across real runner processes on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

import asyncpg
import httpx
import pytest
import uvicorn

import covey
from covey.context import RequestContextMiddleware

from ._harness import RunnerProcess, start_runner, wait_until
from .conftest import client_config

pytestmark = pytest.mark.acceptance
APP = "tests.acceptance.sched_app:cluster"


def _start(url: str, runners: list[RunnerProcess], **extra: str) -> RunnerProcess:
    runner = start_runner(url, app=APP, **extra)
    runners.append(runner)
    return runner


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def test_one_second_cron_runs_each_tick_once_through_kills(
    fresh_pg_database: str, runners: list[RunnerProcess]
) -> None:
    url = fresh_pg_database
    procs = [_start(url, runners) for _ in range(3)]
    await asyncio.sleep(2)
    window_start = time.time()
    for _ in range(2):  # SIGKILL one runner and restart it, twice
        await asyncio.sleep(15)
        victim = procs.pop(0)
        victim.kill()
        await asyncio.sleep(5)
        procs.append(_start(url, runners))
    await asyncio.sleep(60 - (time.time() - window_start))
    window_end = time.time() - 2  # leave the last ticks time to land
    rows = await _fetch(url, "SELECT instant, dupes, started FROM cron_runs ORDER BY instant")
    instants = [r["instant"] for r in rows if window_start <= r["instant"] <= window_end]
    expected = list(range(int(window_start) + 1, int(window_end) + 1))
    missing = sorted(set(expected) - {int(i) for i in instants})
    duplicates = sum(r["dupes"] for r in rows)
    late = sorted(r["started"] - r["instant"] for r in rows)
    print(f"cron: {len(instants)} ticks in window, duplicates={duplicates}, "
          f"missing={missing}, worst lateness={late[-1]:.2f}s")
    assert duplicates == 0
    assert missing == []  # skip_if_older_than (300 s) never applied here


async def test_singleton_moves_with_its_state_and_never_overlaps(
    fresh_pg_database: str, runners: list[RunnerProcess]
) -> None:
    url = fresh_pg_database
    for _ in range(3):
        _start(url, runners)
    await asyncio.sleep(2)  # joins rebalance shards: the singleton may move gracefully
    moves_after_kill = []
    for _ in range(2):
        [current] = await _fetch(url, "SELECT id, runner FROM singleton_lives "
                                      "ORDER BY id DESC LIMIT 1")
        host = next(r for r in runners if r.address == current["runner"]
                    and r.process.poll() is None)
        await asyncio.sleep(0.5)
        host.kill()

        last_id = current["id"]

        async def moved(last_id: int = last_id) -> bool:
            return len(await _fetch(
                url, f"SELECT id FROM singleton_lives WHERE id > {last_id}")) > 0
        await wait_until(moved, timeout=30)
        [new] = await _fetch(url, "SELECT runner, start_count FROM singleton_lives "
                                  "ORDER BY id DESC LIMIT 1")
        moves_after_kill.append(new)
        _start(url, runners)
        await asyncio.sleep(2)
    lives = await _fetch(url, "SELECT runner, started, last_seen, start_count "
                              "FROM singleton_lives ORDER BY started")
    for before, after in itertools.pairwise(lives):
        assert after["started"] >= before["last_seen"]  # never two at once
        assert after["start_count"] >= before["start_count"]  # state handed over
    for life in moves_after_kill:
        assert life["start_count"] >= 10  # resumed from the saved state, not from zero


async def _tick_instants(url: str, runner: RunnerProcess) -> list[float]:
    """The ticks ``runner`` ran, oldest first (none before the app made its table)."""
    try:
        rows = await _fetch(url, "SELECT instant, runner FROM cron_runs ORDER BY instant")
    except asyncpg.UndefinedTableError:
        return []
    return [r["instant"] for r in rows if r["runner"] == runner.address]


async def test_missed_ticks_after_downtime_are_skipped_not_burst(
    fresh_pg_database: str, runners: list[RunnerProcess]
) -> None:
    url = fresh_pg_database
    first = _start(url, runners, APP_CRON_SKIP="3")

    async def first_ticked() -> bool:
        return len(await _tick_instants(url, first)) >= 2

    await wait_until(first_ticked, timeout=30)
    assert first.terminate() == 0  # the whole cluster is down...
    down_at = time.time()
    await asyncio.sleep(8)  # ...for longer than skip_if_older_than (3 s): the scenario itself
    second = _start(url, runners, APP_CRON_SKIP="3")
    up_at = time.time()

    async def resumed() -> bool:
        # the restarted cluster runs the schedule again: every second, no gap
        steady = [i for i in await _tick_instants(url, second) if i > up_at]
        return len(steady) >= 3 and steady == [steady[0] + n for n in range(len(steady))]

    await wait_until(resumed, timeout=30)
    await wait_until(lambda: any("skipped" in line for line in second.lines),
                     timeout=10)  # skipped ticks are reported
    rows = await _fetch(url, "SELECT instant, started FROM cron_runs ORDER BY instant")
    # ticks already older than skip_if_older_than when a runner was back never ran...
    too_old = [r for r in rows if down_at + 1 < r["instant"] < up_at - 3 - 1]
    assert too_old == []
    # ...so the restart runs at most the few ticks younger than 3 s, not the backlog
    burst = [r for r in rows if up_at - 1 <= r["started"] <= up_at + 1.5]
    assert len(burst) <= 3 + 2


async def test_tenant_from_an_http_request_reaches_another_runner(
    fresh_pg_database: str, runners: list[RunnerProcess]
) -> None:
    from .sched_app import Probe

    url = fresh_pg_database
    procs = [_start(url, runners) for _ in range(3)]
    client = covey.Cluster(client_config(url), client_only=True)
    client.register(Probe)
    async with client:
        async def wait_all() -> bool:
            await client.sharding.refresh_membership()
            return len(client.sharding.live) == 3
        await wait_until(wait_all, timeout=30)

        async def api(scope, receive, send):  # type: ignore[no-untyped-def]
            seen = await client.client(Probe, scope["path"].strip("/")).seen()
            body = httpx.Response(200, json=seen).content
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

        app = RequestContextMiddleware(api, cluster=client, require_tenant=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        serving = asyncio.create_task(server.serve())
        try:
            await wait_until(lambda: server.started, timeout=10)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                runners_seen = set()
                for i in range(12):
                    r = await http.get(f"/probe-{i}", headers={"X-Tenant-ID": "acme",
                                                               "X-Request-ID": f"rq-{i}"})
                    assert r.status_code == 200
                    seen = r.json()
                    assert seen["tenant"] == "acme" and seen["request"] == f"rq-{i}"
                    runners_seen.add(seen["runner"])
                assert runners_seen <= {p.address for p in procs} and len(runners_seen) >= 2
                denied = await http.get("/probe-x")
                assert denied.status_code == 400
                assert denied.json()["error"] == "tenant_required"
        finally:
            server.should_exit = True
            await serving
