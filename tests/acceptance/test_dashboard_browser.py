"""A real browser on the dashboard: two pods on PostgreSQL, every view, one retry.

Two pods of ``tests/acceptance/dashboard_pod.py`` (uvicorn, a runner embedded,
the dashboard mounted at ``/dash`` behind HTTP Basic auth) share a database of
their own, which ``_dashboard_seed.seed`` fills through the public API (jobs
succeeded, queued and dead; a workflow waiting for a signal and one completed;
an event group with a dead letter; webhook endpoints, one with a dead delivery).
Headless Chromium (Debian's package, driven by Playwright) then opens every view
on pod A as operator ``alice`` and asserts what it shows; retries the dead
``gated`` job from the jobs view (dead filter), through the confirmation page,
and waits until the job's page shows it succeeded (a second tab, opened on the
job's page before the retry and never reloaded, must get there through the live
SSE update); and checks pod A's audit line naming alice. No page may log an
error to the console or throw. One screenshot per view goes to
``test-artifacts/dashboard/<view>.png`` (not committed; replaced on each run).
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _create_db, _drop_db, _with_database, require_postgres, run_sync

from ._browser import chromium, require_chromium
from ._dashboard_seed import Seeded, seed, until
from ._pods import ROOT, Pod, wait_ready
from .dashboard_pod import TOKEN, start_pod

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(120)]

WAIT_MS = 20_000  # generous: two pods, PostgreSQL and a browser share two noisy cores
SHOTS = ROOT / "test-artifacts" / "dashboard"
OPERATOR = "alice"
VIEWS = ["runners", "shards", "entities", "jobs", "workflows", "events", "webhooks", "schedules",
         "health"]  # the nav bar, in order


@dataclass
class Running:
    """The running pods, what was seeded, and the file that opens the ``gated`` job."""

    pod_a: Pod
    pod_b: Pod
    seeded: Seeded
    gate: Path
    executable: str

    @property
    def dash(self) -> str:
        return f"{self.pod_a.url}/dash"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    executable = require_chromium()  # before anything starts: skip (or fail on CI) early
    server = require_postgres()
    name = f"covey_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    run_sync(_create_db(server, name))
    database_url = _with_database(server, name)
    workdir = tmp_path_factory.mktemp("dashboard")
    shutil.rmtree(SHOTS, ignore_errors=True)  # only this run's screenshots
    gate = workdir / "gate-open"
    pods = [start_pod(f"pod-{n}", database_url, workdir, gate) for n in "ab"]
    try:
        run_sync(wait_ready(pods))
        seeded = run_sync(seed(database_url, pods[0].url))
        yield Running(pods[0], pods[1], seeded, gate, executable)
    finally:
        for pod in pods:
            pod.stop()
        print("\n".join(f"--- {pod.name}\n{pod.output()}" for pod in pods))  # on failure
        run_sync(_drop_db(server, name))


@dataclass
class Browser:
    """A page of a Chromium context that sends alice's credentials, and the
    JavaScript errors seen on it."""

    page: Any
    errors: list[str]

    async def open(self, url: str) -> Any:
        answer = await self.page.goto(url)
        assert answer is not None and answer.status == 200, (url, answer and answer.status)
        return answer

    async def shot(self, view: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SHOTS / f"{view}.png"), full_page=True)


@pytest.fixture
async def browser(cluster: Running) -> AsyncIterator[Browser]:
    credentials = base64.b64encode(f"{OPERATOR}:{TOKEN}".encode()).decode()
    async with chromium(cluster.executable) as chrome:
        context = await chrome.new_context(
            extra_http_headers={"Authorization": f"Basic {credentials}"},
            viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        opened = Browser(watch(await context.new_page(), errors), errors)
        yield opened
        await context.close()
    assert errors == [], errors


def watch(page: Any, errors: list[str]) -> Any:
    """``page``, its console errors and uncaught exceptions collected in ``errors``."""
    page.on("console", lambda m: errors.append(f"console: {m.text} ({m.location})")
            if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    return page


def hook(value: str) -> str:
    return f'[data-testid="{value}"]'


async def cells(row: Any) -> list[str]:
    """The text of each cell of a table row."""
    return [t.strip() for t in await row.locator("td").all_inner_texts()]


async def test_every_view_shows_the_cluster(cluster: Running, browser: Browser) -> None:
    from playwright.async_api import expect

    page, dash, seeded = browser.page, cluster.dash, cluster.seeded
    main = page.locator("main")

    # without credentials: refused
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{dash}/runners")).status_code == 403

    # runners: both pods serving, the 12 shards split between them
    await browser.open(f"{dash}/")  # redirects to the runners view
    assert page.url.endswith("/dash/runners"), page.url
    await expect(page.locator("h1")).to_have_text("Runners")
    hrefs = await page.locator("nav a").evaluate_all("links => links.map(a => a.href)")
    assert [href.rsplit("/", 1)[-1] for href in hrefs] == VIEWS, hrefs
    await expect(page.locator(hook("operator"))).to_have_text(OPERATOR)
    runners = page.locator(f'{hook("runners-table")} tr[data-testid^="runner-row-"]')
    await expect(runners).to_have_count(2, timeout=WAIT_MS)
    addresses: list[str] = []

    async def both_serving() -> bool:
        rows = [await cells(row) for row in await runners.all()]
        addresses[:] = [r[0] for r in rows]
        # address, state, machine id, groups, held, assigned, ...
        return ([r[1] for r in rows] == ["serving", "serving"]
                and all(r[4] == r[5] for r in rows) and sum(int(r[4]) for r in rows) == 12)

    await until("both runners serving, holding their 12 shards", both_serving)
    await browser.shot("runners")

    # shards: every shard held by one of the two runners, at an epoch
    await browser.open(f"{dash}/shards")
    await expect(page.locator("h1")).to_contain_text("Shard")
    await expect(page.locator(f'{hook("shards-table")} tbody tr')).to_have_count(12)
    for shard in range(1, 13):
        _, owner, epoch, _ = await cells(page.locator(hook(f"shard-row-default-{shard}")))
        assert owner in addresses and int(epoch) >= 1, (shard, owner, epoch, addresses)
    await browser.shot("shards")

    # entities: the three Counter instances are active
    await browser.open(f"{dash}/entities")
    counter = page.locator(hook("entity-row-Counter"))
    await expect(counter.locator("td").nth(1)).to_have_text("3", timeout=WAIT_MS)
    await browser.shot("entities")

    # jobs: counts by name, then the dead filter
    await browser.open(f"{dash}/jobs")
    expected = {"report": ["2", "0", "0"], "doomed": ["0", "0", "1"],
                "gated": ["0", "0", "1"]}  # queued, running, dead
    for name, counts in expected.items():
        row = page.locator(hook(f"job-count-row-{name}"))
        assert (await cells(row))[1:4] == counts, (name, await cells(row))
    await expect(page.locator(hook(f"job-row-{seeded.report_id}"))).to_contain_text("succeeded")
    await browser.shot("jobs")
    await browser.open(f"{dash}/jobs?state=dead")
    for job_id, name in ((seeded.doomed_id, "doomed"), (seeded.gated_id, "gated")):
        row = page.locator(hook(f"job-row-{job_id}"))
        await expect(row).to_contain_text(name)
        await expect(row).to_contain_text("dead")
        await expect(page.locator(hook(f"retry-{job_id}"))).to_be_visible()
    await expect(page.locator(hook(f"job-row-{seeded.report_id}"))).to_have_count(0)
    await browser.shot("jobs-dead")

    # a job: its state, attempts and each attempt's error
    await browser.open(f"{dash}/jobs/{seeded.doomed_id}")
    await expect(page.locator(hook("job-state"))).to_have_text("dead")
    await expect(page.locator(hook("job-attempts"))).to_have_text("2")
    errors = page.locator(hook("job-errors-table"))
    for attempt in (1, 2):
        await expect(errors).to_contain_text(f"the printer is on fire (d1, attempt {attempt})")
    await browser.shot("job")

    # workflows: both executions, then the waiting one's journal
    await browser.open(f"{dash}/workflows")
    for workflow_id, state in (("order-waiting", "waiting"), ("order-done", "completed")):
        row = page.locator(hook(f"workflow-row-{workflow_id}"))
        assert (await cells(row))[1:4] == ["approval", "1", state], await cells(row)
    await browser.shot("workflows")
    await browser.open(f"{dash}/workflows/order-waiting")
    await expect(page.locator(hook("workflow-state"))).to_have_text("waiting")
    await expect(page.locator(hook("workflow-facts"))).to_contain_text("approve")
    journal = page.locator(f'{hook("journal")} li')
    await expect(journal.first).to_contain_text("prepare")
    await expect(journal.first).to_contain_text("prepared waiting")
    await expect(page.locator(hook("signal-order-waiting"))).to_be_visible()
    await browser.shot("workflow")
    await browser.open(f"{dash}/workflows/order-done")
    await expect(page.locator(hook("workflow-state"))).to_have_text("completed")
    await expect(page.locator(hook("journal"))).to_contain_text("shipped done")

    # events: the group's lag and dead letter, then the dead letter itself
    await browser.open(f"{dash}/events")
    group = await cells(page.locator(hook("group-row-pinger")))
    # group, topics, pending, not fanned out, lag, lag (s), dead letters
    assert group[1] == "dash.pings" and group[4] == "0" and group[6] == "1", group
    await expect(page.locator(hook("topic-row-dash.pings")).locator("td").nth(1)).to_have_text("2")
    await browser.shot("events")
    await browser.open(f"{dash}/events/pinger")
    await expect(main).to_contain_text("1 dead letter")
    dead = page.locator(f'{hook("dead-letters-table")} tr[data-testid^="dead-row-"]')
    await expect(dead).to_have_count(1)
    await expect(dead).to_contain_text("poisoned ping bad")
    await expect(dead).to_contain_text(str(seeded.poison_event))
    await expect(page.locator(hook("replay-pinger"))).to_be_visible()
    await browser.shot("event-group")

    # webhooks: both endpoints enabled; the broken one's dead delivery
    await browser.open(f"{dash}/webhooks")
    for endpoint, path in ((seeded.sink_id, "/hooks/sink"), (seeded.broken_id, "/hooks/broken")):
        row = page.locator(hook(f"endpoint-row-{endpoint}"))
        await expect(row).to_contain_text(path)
        await expect(row).to_contain_text("enabled")
    await browser.shot("webhooks")
    await browser.open(f"{dash}/webhooks/{seeded.sink_id}")
    await expect(page.locator(hook("deliveries-table"))).to_contain_text("delivered")
    await browser.open(f"{dash}/webhooks/{seeded.broken_id}")
    dead = page.locator(f'{hook("endpoint-dead-table")} tr[data-testid^="dead-delivery-row-"]')
    await expect(dead).to_have_count(1)
    await expect(dead).to_contain_text("invoice.paid")
    await expect(dead).to_contain_text("500")
    await browser.shot("webhook")

    # schedules: the cron and the singleton, both healthy
    await browser.open(f"{dash}/schedules")
    tick = page.locator(hook("cron-row-tick"))
    await expect(tick).to_contain_text("*/2 * * * * *")
    await expect(tick.locator("td").last).to_have_text("ok", timeout=WAIT_MS)
    keeper = page.locator(hook("singleton-row-keeper"))
    await expect(keeper.locator("td").last).to_have_text("ok", timeout=WAIT_MS)
    await browser.shot("schedules")

    # health: every check passing
    await browser.open(f"{dash}/health")
    await expect(page.locator(hook("health-status"))).to_have_text("pass", timeout=WAIT_MS)
    checks = page.locator(f'{hook("health-table")} tr[data-testid^="check-row-"]')
    assert await checks.count() >= 1
    for row in await checks.all():
        assert (await cells(row))[1] == "pass", await cells(row)
    await browser.shot("health")


async def test_a_dead_job_is_retried_from_the_page(cluster: Running, browser: Browser) -> None:
    from playwright.async_api import expect

    page, dash, job_id = browser.page, cluster.dash, cluster.seeded.gated_id
    # a second tab on the job's page: its live fragment must follow the retry
    watcher = watch(await page.context.new_page(), browser.errors)
    await watcher.goto(f"{dash}/jobs/{job_id}")
    await expect(watcher.locator(hook("job-state"))).to_have_text("dead")

    cluster.gate.touch()  # from now on the gated job succeeds
    await browser.open(f"{dash}/jobs?state=dead")
    await page.locator(hook(f"retry-{job_id}")).click()
    confirm = page.locator(hook("confirm"))
    await expect(confirm).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(hook("confirm-description"))).to_contain_text(str(job_id))
    await expect(page.locator(hook("cancel-confirm"))).to_be_visible()
    await browser.shot("confirm")
    await confirm.click()
    flash = page.locator(hook("flash"))
    await expect(flash).to_contain_text(f"job {job_id} (gated) requeued", timeout=WAIT_MS)
    await browser.shot("flash")

    await expect(watcher.locator(hook("job-state"))).to_have_text("succeeded", timeout=WAIT_MS)
    await browser.open(f"{dash}/jobs/{job_id}")
    await expect(page.locator(hook("job-state"))).to_have_text("succeeded")
    await expect(page.locator("main")).to_contain_text("through the gate g1")
    await browser.shot("job-retried")
    await watcher.close()

    # the audit line: dashboard: <operator> <action> <target> -> <outcome>
    line = f"dashboard: {OPERATOR} retry-job job {job_id} -> job {job_id} (gated) requeued"

    async def audited() -> bool:
        return line in cluster.pod_a.output()

    await until(f"the audit line {line!r} in pod A's log", audited)
