"""Live updates: the view's fragment over SSE, sent again when what it shows changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from covey.dashboard import Dashboard
from covey.realtime._sse_frames import SseParser

from .conftest import Email, Shop, operator_header, until


class LiveClient:
    """Drives one ``GET /live/...`` through the ASGI app and parses what it sends."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.events: list[Any] = []
        self.gone = asyncio.Event()
        self._parser = SseParser()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            self.events += self._parser.feed(message.get("body", b""))


@asynccontextmanager
async def live(app: Dashboard, path: str, query: str = "") -> AsyncIterator[LiveClient]:
    client = LiveClient()
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
             "query_string": query.encode(), "headers": [(b"x-operator", b"alice")],
             "client": ("127.0.0.1", 5000)}
    task = asyncio.create_task(app(scope, client.receive, client.send))
    try:
        yield client
    finally:
        client.gone.set()
        await asyncio.wait_for(task, 10)


async def test_the_jobs_fragment_arrives_and_changes_when_a_job_dies(shop: Shop) -> None:
    app = Dashboard(shop.cluster, authorize=operator_header, refresh=0.05)
    async with live(app, "/live/jobs", "state=dead") as client:
        await until(lambda: client.events)
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["server-timing"].startswith("app;dur=")
        first = client.events[0]
        assert first.event == "jobs" and 'data-testid="jobs-table"' in first.data
        assert "job-row-" not in first.data
        shop.fail.add("bad@x")
        handle = await shop.cluster.jobs.submit("email.send", Email(to="bad@x"))
        await until(lambda: any(f"job-row-{handle.id}" in e.data for e in client.events))
        settled = len(client.events)
        await asyncio.sleep(0.3)  # several refreshes: nothing changed, nothing is sent
        assert len(client.events) == settled


async def test_a_live_feed_ends_when_the_pod_drains(shop: Shop) -> None:
    closing = asyncio.Event()
    app = Dashboard(shop.cluster, authorize=operator_header, refresh=0.05, closing=closing)
    async with live(app, "/live/runners") as client:
        await until(lambda: client.events)
        closing.set()
        await until(lambda: client._parser.retry is not None)  # retry: then the end
    refused = LiveClient()
    scope = {"type": "http", "method": "GET", "path": "/live/runners", "root_path": "",
             "query_string": b"", "headers": [(b"x-operator", b"mallory")]}
    app_refusing = Dashboard(shop.cluster, authorize=lambda r: None)
    refused.gone.set()
    await app_refusing(scope, refused.receive, refused.send)
    assert refused.status == 403
