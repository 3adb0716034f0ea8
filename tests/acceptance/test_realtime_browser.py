"""A real browser on the live-orders example: two pods on PostgreSQL, one restarted.

Headless Chromium opens ``/?user=alice`` on pod A (examples/live_orders.html:
covey.js subscribes to ``/streams/orders`` over SSE and connects to ``/rpc`` over
WebSocket). Order updates are posted to pod B only, so what the page shows came
over the runner mesh: stream items over SSE, and alice's notices through
``send_to_user`` to the pod holding her socket. Pod A is then stopped (SIGTERM:
its streams get ``retry:``, its sockets close 1012) and started again on the same
port while updates go on; the test asserts what the page shows: both connections
reconnected, every update listed once and in order, and the notice sent while
alice had no connection (``store=True``) shown exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._browser import chromium, post_update, require_chromium, start_live_orders
from ._pods import Pod, wait_ready

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(120)]

WAIT_MS = 20_000  # generous: two pods, PostgreSQL and a browser share two noisy cores
POD_ENV = {"COVEY_DRAIN_DELAY": "0.5"}  # no balancer in front: no reason to linger


class Pods:
    """Pods A and B of the example, stopped (killed if need be) at the end."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.started: list[Pod] = []

    def start(self, name: str, port: int | None = None) -> Pod:
        pod = start_live_orders(name, self.database_url, self.workdir, port=port, **POD_ENV)
        self.started.append(pod)
        return pod

    def logs(self) -> str:
        seen = {pod.log for pod in self.started}
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}"
                         for log in sorted(seen))


@pytest.fixture
async def pods(fresh_pg_database: str, tmp_path: Path) -> AsyncIterator[Pods]:
    running = Pods(fresh_pg_database, tmp_path)
    try:
        yield running
    finally:
        for pod in running.started:
            pod.stop()
        print(running.logs())  # shown when the test failed


async def texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_inner_texts()]


async def test_the_page_follows_orders_and_notices_across_a_pod_restart(pods: Pods) -> None:
    executable = require_chromium()
    from playwright.async_api import expect

    pod_a, pod_b = pods.start("pod-a"), pods.start("pod-b")
    await wait_ready([pod_a, pod_b])
    posted: list[str] = []  # "o-1: paid", in the order the updates were made
    notified: list[str] = []  # the notices alice must see, in order
    updates = 0

    async def update(http: httpx.AsyncClient, order: str, status: str, *,
                     owner: str | None = "alice") -> str | None:
        nonlocal updates
        updates += 1
        answer = await post_update(http, pod_b, order, {
            "status": status, "owner": owner, "update_id": f"u-{updates}"})
        assert answer["order"]["status"] == status
        posted.append(f"{order}: {status}")
        if owner is not None:
            notified.append(f"{order}: {status}")
        notice: str | None = answer["notice"]
        return notice

    async with chromium(executable) as browser, httpx.AsyncClient() as http:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{pod_a.url}/?user=alice")
        sse, ws = page.locator("#sse-state"), page.locator("#ws-state")
        await expect(sse).to_have_text("open", timeout=WAIT_MS)
        await expect(ws).to_have_text("open", timeout=WAIT_MS)

        # live: every update goes to pod B; alice's socket is on pod A
        for order, status in (("o-1", "paid"), ("o-2", "paid"), ("o-1", "packed")):
            assert await update(http, order, status) == "delivered"
        await expect(page.locator("#log li")).to_have_text(posted, timeout=WAIT_MS)
        await expect(page.locator("#notices li")).to_have_text(notified, timeout=WAIT_MS)
        await expect(page.locator('#orders li[data-order="o-1"]')).to_have_text("o-1: packed")

        # pod A stops (SIGTERM: the drain closes its streams and sockets, exit 0) ...
        pod_a.terminate()
        await expect(sse).not_to_have_text("open", timeout=WAIT_MS)
        await expect(ws).not_to_have_text("open", timeout=WAIT_MS)
        assert await asyncio.to_thread(pod_a.process.wait, 30) == 0, pods.logs()
        # ... updates go on while alice has no connection anywhere ...
        assert await update(http, "o-2", "shipped") == "stored"
        assert await update(http, "o-3", "paid", owner=None) is None
        # ... and it starts again on the same port, where the page reconnects
        pod_a = pods.start("pod-a", port=pod_a.port)
        await wait_ready([pod_a])
        await expect(sse).to_have_text("open", timeout=WAIT_MS)
        await expect(ws).to_have_text("open", timeout=WAIT_MS)
        await expect(page.locator("#notices li")).to_have_text(notified, timeout=WAIT_MS)

        for order, status in (("o-3", "shipped"), ("o-1", "delivered")):
            assert await update(http, order, status) == "delivered"
        await expect(page.locator("#log li")).to_have_text(posted, timeout=WAIT_MS)
        await expect(page.locator("#notices li")).to_have_text(notified, timeout=WAIT_MS)
        assert await texts(page, "#orders li") == ["o-1: delivered", "o-2: shipped",
                                                   "o-3: shipped"]
        assert int(await page.locator("#sse-reconnects").inner_text()) >= 1
        assert int(await page.locator("#ws-reconnects").inner_text()) >= 1
        cursors = await page.locator("#log li").evaluate_all(
            "items => items.map(li => li.dataset.cursor)")
        positions = [int(c.split(":")[1]) for c in cursors]
        assert positions == sorted(set(positions)), cursors  # each item once, in order
        mids = await page.locator("#notices li").evaluate_all(
            "items => items.map(li => li.dataset.mid)")
        assert len(set(mids)) == len(notified), mids

        # the page's own form posts to pod A; the typed RPC over the reconnected
        # WebSocket answers from the entity
        await page.fill("#update input[name=order]", "o-4")
        await page.fill("#update input[name=status]", "paid")
        await page.click("#update button")
        await expect(page.locator("#update-result")).to_have_text("notice delivered",
                                                                  timeout=WAIT_MS)
        posted.append("o-4: paid")
        notified.append("o-4: paid")
        await expect(page.locator("#log li")).to_have_text(posted, timeout=WAIT_MS)
        await expect(page.locator("#notices li")).to_have_text(notified, timeout=WAIT_MS)
        await page.fill("#lookup input[name=order]", "o-1")
        await page.click("#lookup button")
        await expect(page.locator("#lookup-result")).to_have_text(
            "o-1: delivered (version 3)", timeout=WAIT_MS)
        assert errors == []
