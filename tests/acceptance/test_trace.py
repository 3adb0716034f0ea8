"""One trace across two pods: HTTP on pod A → persisted RPC on pod B → job on pod A.

Pod A is uvicorn serving ``tests.acceptance.trace_app:app`` (a runner in its
lifespan); pod B is ``covey run tests.acceptance.trace_app:cluster``. Both
export every span to a JSON-lines file of their own. The test picks an entity
id whose shard pod B owns and a job dedupe key whose shard pod A owns, sends
one request with a ``traceparent``, and follows the spans:

    POST /orders/{order_id}   SERVER    A  child of the test's traceparent
    send TraceOrders.place    PRODUCER  A  child of the HTTP span
    process TraceOrders.place CONSUMER  B  new trace, linked to the send span
    run job trace.ship        CONSUMER  A  new trace, linked to the process span
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from covey.core.runtime import shard_for

from ._harness import ROOT, RunnerProcess, runner_env, start_runner, wait_until

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.trace_app"
SHARDS = 30  # runner_env's COVEY_SHARDS
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
LOCKS_SQL = (
    "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " GROUP BY pid"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def web_pod(fresh_pg_database: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Pod A: uvicorn with the app; yields its base URL and its span file."""
    spans = tmp_path / "pod-a.jsonl"
    port = _free_port()
    env = runner_env(fresh_pg_database, COVEY_TEST_TRACE_FILE=str(spans),
                     COVEY_TRACE_DETAILS="0")
    log = open(tmp_path / "pod-a.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{APP}:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", spans
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _only(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, sorted(s["name"] for s in spans)
    return found[0]


def _pick(prefix: str, shards: set[int], group_prefix: str = "") -> str:
    """The first ``prefix<n>`` whose shard (of ``group_prefix + id``) is in ``shards``."""
    for n in range(10_000):
        candidate = f"{prefix}{n}"
        if shard_for(group_prefix + candidate, SHARDS).id in shards:
            return candidate
    raise AssertionError(f"no id with a shard in {sorted(shards)}")


async def test_one_trace_across_http_entity_and_job_on_two_pods(
        fresh_pg_database: str, runners: list[RunnerProcess], tmp_path: Path,
        web_pod: tuple[str, Path]) -> None:
    worker_spans = tmp_path / "pod-b.jsonl"
    # pod B first: it migrates the schema
    # pod B with covey's detailed span attributes (the default), pod A without
    worker = start_runner(fresh_pg_database, app=f"{APP}:cluster",
                          COVEY_TEST_TRACE_FILE=str(worker_spans))
    runners.append(worker)
    base, web_spans = web_pod
    conn = await asyncpg.connect(fresh_pg_database)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        async def balanced() -> bool:
            try:
                answer = (await http.get("/shards")).json()
            except httpx.TransportError:
                return False  # pod A still starting
            locks = {r["pid"]: r["n"] for r in await conn.fetch(LOCKS_SQL)}
            return (len(locks) == 2 and sum(locks.values()) == SHARDS
                    and 0 < len(answer["owned"]) < SHARDS)

        try:
            await wait_until(balanced, timeout=60, interval=0.1)
        finally:
            await conn.close()
        pod_a = (await http.get("/shards")).json()
        on_a = set(pod_a["owned"])
        entity = _pick("order-", set(range(1, SHARDS + 1)) - on_a)  # served by pod B
        job_key = _pick("ship-", on_a, group_prefix="trace.ship:")  # run by pod A

        response = await http.post(
            "/orders/o-1", params={"entity": entity, "job": job_key},
            headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "x-tenant-id": "acme"})
        assert response.status_code == 201, response.text
        assert response.json()["handled_by"] == worker.address  # the RPC ran on pod B

        # each span is written when it ends: the HTTP span may end after the job's
        wanted = {"POST /orders/{order_id}", "send TraceOrders.place", "run job trace.ship"}
        await wait_until(lambda: wanted <= {s["name"] for s in _spans(web_spans)}, timeout=30)

    a, b = _spans(web_spans), _spans(worker_spans)
    http_in = _only(a, "POST /orders/{order_id}")
    send = _only(a, "send TraceOrders.place")
    process = _only(b, "process TraceOrders.place")
    job = _only(a, "run job trace.ship")

    # HTTP in on pod A continues the caller's trace; the send span is its child
    assert (http_in["kind"], http_in["trace_id"], http_in["parent_id"]) == (
        "SERVER", TRACE_ID, CLIENT_SPAN)
    assert http_in["attributes"]["covey.tenant"] == "acme"
    assert http_in["attributes"]["http.response.status_code"] == 201
    assert (send["kind"], send["trace_id"], send["parent_id"]) == (
        "PRODUCER", TRACE_ID, http_in["span_id"])
    assert send["attributes"]["covey.tenant"] == "acme"
    assert "covey.entity.id" not in send["attributes"]  # a detail: turned off on pod A

    # the persisted RPC runs on pod B in a trace of its own, linked to the send span
    assert process["kind"] == "CONSUMER" and process["parent_id"] is None
    assert process["links"] == [{"trace_id": TRACE_ID, "span_id": send["span_id"]}]
    assert process["attributes"]["covey.runner"] == worker.address  # a detail: on by default
    assert process["attributes"]["covey.entity.id"] == entity
    assert process["attributes"]["covey.tenant"] == "acme"
    assert process["pid"] != http_in["pid"]

    # the job it submitted runs on pod A, linked to the process span on pod B
    assert job["kind"] == "CONSUMER" and job["parent_id"] is None
    assert job["links"] == [{"trace_id": process["trace_id"], "span_id": process["span_id"]}]
    assert job["attributes"]["covey.runner"] == pod_a["runner"]
    assert job["attributes"]["covey.tenant"] == "acme"  # the request context travelled too
    assert job["pid"] == http_in["pid"]

    # every span of the request shares its trace id or links to a span that does
    by_id = {s["span_id"]: s for s in a + b}

    def reaches_request_trace(span: dict[str, Any], depth: int = 0) -> bool:
        if span["trace_id"] == TRACE_ID:
            return True
        return depth < 5 and any(
            link["span_id"] in by_id and reaches_request_trace(by_id[link["span_id"]], depth + 1)
            for link in span["links"])

    for span in (http_in, send, process, job):
        assert reaches_request_trace(span), span["name"]
