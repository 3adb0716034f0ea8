"""Two uvicorn pods of ``examples/fastapi_app.py`` on PostgreSQL: probes and SIGTERM.

The pods reach PostgreSQL through a TCP proxy the test cuts and restores (see
``_pods.py``); the machine's server keeps running. The bounds are the issue's
acceptance bounds: ``/readyz`` 503 within 5 s of losing the database while
``/livez`` stays 200, ready again within 5 s of it returning; a SIGTERM under
200 requests/s costs the balancer's client no non-2xx answer and the pod exits 0
within the grace period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ._pods import Balancer, PgProxy, Pod, load, probe, start_pod, wait_ready

pytestmark = pytest.mark.acceptance

FLIP_BOUND = 5.0  # seconds: the bound for both directions
GRACE_PERIOD = 30.0  # Kubernetes' default terminationGracePeriodSeconds
DRAIN_DELAY = "2"  # the pods' COVEY_DRAIN_DELAY (a preStop sleep would match it)
RUNNERS = "SELECT address, machine_id, groups FROM covey.runners"
EPOCHS = "SELECT coalesce(sum(epoch), 0) FROM covey.shards"


@pytest.fixture
def proxy(fresh_pg_database: str) -> Iterator[PgProxy]:
    link = PgProxy(fresh_pg_database).start()
    yield link
    link.close()


@pytest.fixture
async def pods(fresh_pg_database: str, proxy: PgProxy,
               tmp_path: Path) -> AsyncIterator[list[Pod]]:
    started = [start_pod(name, proxy.url(fresh_pg_database), tmp_path,
                         COVEY_DRAIN_DELAY=DRAIN_DELAY) for name in ("pod-a", "pod-b")]
    try:
        await wait_ready(started)
        yield started
    finally:
        for pod in started:
            pod.stop()


async def _statuses(http: httpx.AsyncClient, pods: list[Pod], path: str) -> list[int]:
    return list(await asyncio.gather(*(probe(http, pod, path) for pod in pods)))


async def _until_all(http: httpx.AsyncClient, pods: list[Pod], path: str, status: int,
                     bound: float, *, live: list[int]) -> float:
    """Seconds until every pod answers ``status`` on ``path``; ``/livez`` is polled too."""
    start = time.monotonic()
    while True:
        seen = await _statuses(http, pods, path)
        live.extend(await _statuses(http, pods, "/livez"))
        elapsed = time.monotonic() - start
        if all(s == status for s in seen):
            return elapsed
        assert elapsed < bound, (f"{path} answered {seen} {elapsed:.1f} s later, "
                                 f"not {status} within {bound} s")
        await asyncio.sleep(0.1)


async def test_readiness_follows_the_database_and_liveness_does_not(
        pods: list[Pod], proxy: PgProxy) -> None:
    live: list[int] = []
    async with httpx.AsyncClient() as http:
        assert await _statuses(http, pods, "/readyz") == [200, 200]
        proxy.cut()
        flip = await _until_all(http, pods, "/readyz", 503, FLIP_BOUND, live=live)
        print(f"/readyz 503 on both pods {flip:.2f} s after the cut")
        body = (await http.get(pods[0].url + "/readyz")).json()
        assert body["status"] == "fail"
        # the outage goes on: the pods stay alive (no restart storm) and unready
        until = time.monotonic() + 3
        while time.monotonic() < until:
            live.extend(await _statuses(http, pods, "/livez"))
            assert await _statuses(http, pods, "/readyz") == [503, 503]
            await asyncio.sleep(0.2)
        proxy.restore()
        again = await _until_all(http, pods, "/readyz", 200, FLIP_BOUND, live=live)
        print(f"/readyz 200 on both pods {again:.2f} s after the restore")
    assert set(live) == {200}, f"/livez answered {sorted(set(live))} during the outage"
    assert all(pod.process.poll() is None for pod in pods)


async def test_health_shows_each_dependency_with_its_latency(pods: list[Pod]) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(pods[0].url + "/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    checks = response.json()["checks"]
    assert "postgres:responseTime" in checks
    timed = {key: entries for key, entries in checks.items()
             if any("latencyMs" in entry for entry in entries)}
    assert "postgres:responseTime" in timed
    for key, entries in timed.items():
        for entry in entries:
            assert isinstance(entry["latencyMs"], int | float), (key, entry)
            assert entry["status"] in ("pass", "warn", "fail"), (key, entry)
    postgres = checks["postgres:responseTime"][0]
    assert postgres["status"] == "pass" and postgres["componentType"] == "datastore"
    assert isinstance(postgres["latencyP50Ms"], int | float)


async def test_sigterm_under_load_costs_no_request_and_exits_zero(pods: list[Pod]) -> None:
    victim = pods[1]
    accounts = [f"/accounts/acct-{n}" for n in range(40)]
    balancer = Balancer(pods, period=0.5)
    poller = asyncio.create_task(balancer.poll())
    try:
        traffic = asyncio.create_task(load(balancer, rate=200, seconds=10, paths=accounts))
        await asyncio.sleep(2)
        terminated = time.monotonic()
        victim.terminate()
        code = await asyncio.to_thread(victim.process.wait, GRACE_PERIOD)
        exited_after = time.monotonic() - terminated
        await traffic
    finally:
        poller.cancel()
        await balancer.close()
    outcome = balancer.outcome
    print(f"{outcome.sent} requests, {outcome.ok} 2xx, retries after 503: "
          f"{outcome.retries_503}, after connection errors: {outcome.retries_connect}; "
          f"exit {code} {exited_after:.1f} s after SIGTERM")
    assert outcome.sent >= 1990, outcome  # 200/s for 10 s
    assert outcome.failed == [], (outcome.failed[:5], victim.output()[-3000:])
    assert outcome.ok == outcome.sent
    assert code == 0, victim.output()[-3000:]
    assert exited_after < GRACE_PERIOD
    # the balancer saw the victim unready while it still answered, before it went away
    assert balancer.seen[victim.name][:3] == [200, 503, 0], balancer.seen
    assert "SIGTERM: not ready any more; serving requests" in victim.output()
    assert pods[0].process.poll() is None  # the survivor serves on


async def _settled(pods: list[Pod], bound: float = 30.0) -> None:
    """Wait until every pod's ``/health`` reports ``shards:owned`` passing."""
    deadline = time.monotonic() + bound
    async with httpx.AsyncClient() as http:
        for pod in pods:
            while True:
                checks = (await http.get(pod.url + "/health", timeout=2.0)).json()["checks"]
                if all(e["status"] == "pass" for e in checks["shards:owned"]):
                    break
                assert time.monotonic() < deadline, checks["shards:owned"]
                await asyncio.sleep(0.1)


async def test_sigterm_hands_the_shards_over_at_once_and_keeps_the_machine_id(
    pods: list[Pod], fresh_pg_database: str,
) -> None:
    victim = pods[1]
    await _settled(pods)  # each pod holds the shards assigned to it: some must move
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        before = {r["address"]: (r["machine_id"], r["groups"]) for r in await conn.fetch(RUNNERS)}
        serving = [a for a, (_, groups) in before.items() if groups]
        assert len(serving) == 2, before
        epochs = await conn.fetchval(EPOCHS)
        victim.terminate()
        drained: dict[str, tuple[int, list[str]]] = {}
        moved = False  # a peer took shards (their epochs moved on) while the victim lives
        deadline = time.monotonic() + FLIP_BOUND
        while time.monotonic() < deadline and victim.process.poll() is None:
            drained = {r["address"]: (r["machine_id"], r["groups"])
                       for r in await conn.fetch(RUNNERS)}
            moved = moved or await conn.fetchval(EPOCHS) > epochs
            if moved and any(a in drained and not drained[a][1] for a in serving):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    # while it drains, the victim is still registered, serving no shard group (no
    # shard is assigned to it), with the machine id it had: no new runner takes it
    stopped = [a for a in serving if a in drained and not drained[a][1]]
    assert len(stopped) == 1, (before, drained, moved, victim.output()[-2000:])
    assert drained[stopped[0]][0] == before[stopped[0]][0]
    assert moved, "no shard changed hands while the victim drained"
    assert await asyncio.to_thread(victim.process.wait, GRACE_PERIOD) == 0
