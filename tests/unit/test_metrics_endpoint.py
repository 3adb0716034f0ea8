"""The Prometheus endpoint: mounted in an app, and served by a worker pod's runner."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import Counter

import covey.core.metrics
from covey.asgi import metrics_app
from covey.cli._worker_http import WorkerEndpoint

ROOT = Path(__file__).resolve().parents[2]
COVEY_METRICS = [getattr(covey.core.metrics, n) for n in covey.core.metrics.__all__]


def family(metric: Any) -> str:
    name: str = metric.describe()[0].name
    return name


def app_client() -> httpx.AsyncClient:
    app = FastAPI()
    app.mount("/metrics", metrics_app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pod",
                             follow_redirects=True)


async def test_every_covey_metric_and_the_process_metrics_are_exposed() -> None:
    async with app_client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    # a counter's family is exposed with its _total suffix in the text format
    missing = [family(m) for m in COVEY_METRICS
               if not re.search(rf"^# TYPE {family(m)}(_total)? ", text, re.MULTILINE)]
    assert missing == []
    for process_metric in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                           "python_info", "python_gc_objects_collected_total"):
        assert f"\n{process_metric}" in text, process_metric


def test_the_deploy_guide_lists_every_metric() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    exposed = [family(m) + ("_total" if m.describe()[0].type == "counter" else "")
               for m in COVEY_METRICS]
    assert [name for name in exposed if f"`{name}`" not in guide] == []


async def test_values_show_up_and_an_application_metric_too() -> None:
    orders = Counter("test_endpoint_orders", "Orders taken (test)")
    try:
        orders.inc(3)
        covey.core.metrics.SHARDS_OWNED.set(17)
        async with app_client() as client:
            text = (await client.get("/metrics")).text
        assert "\ncovey_shards_owned 17.0\n" in text
        assert "\ntest_endpoint_orders_total 3.0\n" in text
    finally:
        covey.core.metrics.SHARDS_OWNED.set(0)
        from prometheus_client import REGISTRY
        REGISTRY.unregister(orders)


async def test_openmetrics_head_filters_and_methods() -> None:
    async with app_client() as client:
        om = await client.get("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        only = await client.get("/metrics", params={"name[]": "covey_shards_owned"})
        assert [line for line in only.text.splitlines() if not line.startswith("#")] == [
            "covey_shards_owned 0.0"]
        head = await client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 1000
        post = await client.post("/metrics")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


# ---- the worker pod's endpoint ---------------------------------------------------


@dataclass
class Probe:
    ok: bool
    body: dict[str, Any] = field(default_factory=dict)


class FakeHealth:
    def __init__(self) -> None:
        self.ready_ok = False

    def live(self) -> Probe:
        return Probe(True, {"status": "pass"})

    def ready(self) -> Probe:
        return Probe(self.ready_ok, {"status": "pass" if self.ready_ok else "fail"})

    def report(self) -> Probe:
        return Probe(True, {"status": "pass", "checks": {"storage:responseTime": []}})


class FakeCluster:
    def __init__(self) -> None:
        self.health = FakeHealth()


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_worker_endpoint_serves_metrics_and_probes() -> None:
    cluster = FakeCluster()
    endpoint = WorkerEndpoint(cluster, "127.0.0.1", 0)
    await endpoint.start()
    try:
        get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
        status, headers, body = await raw(endpoint.port, get % b"/metrics")
        assert status == 200 and b"# TYPE covey_shards_owned gauge" in body
        assert headers["content-length"] == str(len(body))
        status, headers, body = await raw(endpoint.port, get % b"/readyz")
        assert (status, headers["content-type"]) == (503, "application/health+json")
        assert json.loads(body) == {"status": "fail"}
        cluster.health.ready_ok = True
        assert (await raw(endpoint.port, get % b"/readyz?verbose=1"))[0] == 200
        assert (await raw(endpoint.port, get % b"/livez"))[0] == 200
        assert b"storage:responseTime" in (await raw(endpoint.port, get % b"/health"))[2]
        assert (await raw(endpoint.port, get % b"/nope"))[0] == 404
        assert (await raw(endpoint.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await raw(endpoint.port, b"nonsense\r\n\r\n"))[0] == 400
        status, _, body = await raw(endpoint.port, b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n")
        assert status == 400  # oversized request: refused, the server keeps serving
        assert (await raw(endpoint.port, get % b"/livez"))[0] == 200
    finally:
        await endpoint.close()


APP = """
import covey

cluster = covey.Cluster.from_env()
"""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.acceptance  # starts real processes
def test_serve_metrics_runs_a_worker_that_prometheus_can_scrape(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'covey.db'}",
                "COVEY_SHARDS": "6",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])})
    process = subprocess.Popen(
        [sys.executable, "-m", "covey", "serve-metrics", "worker:cluster", "--host",
         "127.0.0.1", "--port", "0", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        base = f"http://{ready['metrics']}"
        status, body = _get(f"{base}/metrics")
        assert status == 200 and b"\ncovey_shards_owned 6.0\n" in body
        assert b"\nprocess_cpu_seconds_total " in body
        deadline = time.monotonic() + 15
        while _get(f"{base}/readyz")[0] != 200:  # ready after the first health checks
            assert time.monotonic() < deadline, _get(f"{base}/readyz")
            time.sleep(0.1)
        assert _get(f"{base}/livez")[0] == 200
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_a_bad_metrics_port_is_a_usage_error(port: str) -> None:
    from click.testing import CliRunner

    from covey.cli import main

    result = CliRunner().invoke(main, ["run", "worker:cluster", "--metrics-port", port])
    assert result.exit_code == 2 and "--metrics-port" in result.output
