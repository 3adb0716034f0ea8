"""Every view renders what the cluster holds; bad addresses are 404/400 pages."""

from __future__ import annotations

from importlib import resources

import httpx

from covey.dashboard._views_workflows import NAME_HEADER, START_TAG
from covey.health.runtime import EntityReport
from covey.workflows import _definition as workflow_definition

from .conftest import Cart, Email, OrderPlaced, Shop, until


async def fill(shop: Shop) -> dict[str, int]:
    """Jobs (one dead, one succeeded, one running), a workflow, a dead event, an endpoint."""
    cluster = shop.cluster
    shop.fail.add("bad@x")
    dead = await cluster.jobs.submit("email.send", Email(to="bad@x"))
    ok = await cluster.jobs.submit("email.send", Email(to="ok@x"))
    running = await cluster.jobs.submit("slow", Email(to="s"))
    await cluster.start("checkout", "o-1", workflow_id="wf-1")
    await cluster.publish(OrderPlaced(order_id="bad-1"))
    await cluster.client(Cart, "c-1").ping()
    assert cluster.address is not None
    # the runner reports every few seconds: once more now, with the cart active
    await EntityReport(cluster.storage.state, cluster._clock, str(cluster.address)).report()

    async def settled() -> bool:
        return ((await cluster.jobs.status(dead.id)).state == "dead"
                and (await cluster.jobs.status(running.id)).state == "running"
                and "ok@x" in shop.sent
                and bool(await cluster.events.dead_letters("billing")))

    await until(settled)
    return {"dead": dead.id, "ok": ok.id, "running": running.id}


async def test_every_view_renders_with_data_and_its_test_hooks(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    ids = await fill(shop)
    endpoint = await shop.cluster.webhooks.add_endpoint("https://example.com/hook")
    address = str(shop.cluster.address)
    expect = {
        "/runners": ["runners-table", f"runner-row-{address}"],
        "/shards": ["shards-table", "shard-row-default-1", f">{address}<"],
        "/entities": ["entities-table", "entity-row-Cart"],
        "/jobs": ["jobs-table", "job-counts-table", "job-count-row-email.send",
                  f"job-row-{ids['dead']}", f"retry-{ids['dead']}", f"cancel-{ids['running']}"],
        f"/jobs/{ids['dead']}": ["job-state", "smtp down for bad@x", f"retry-{ids['dead']}"],
        "/workflows": ["workflows-table", "workflow-row-wf-1", ">checkout<"],
        "/workflows/wf-1": ["journal", "workflow-state", "signal-wf-1", "cancel-wf-1"],
        "/events": ["events-table", "group-row-billing"],
        "/events/billing": ["dead-letters-table", "cannot bill bad-1", "replay-billing"],
        "/webhooks": ["webhooks-table", f"endpoint-row-{endpoint.id}"],
        f"/webhooks/{endpoint.id}": ["deliveries-table", "https://example.com/hook"],
        "/schedules": ["schedules-table", "cron-row-nightly", "singleton-row-sweeper",
                       "* * * * *"],
        "/health": ["health-table", "check-row-memory:responseTime"],
    }
    for path, needles in expect.items():
        page = await dash.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["server-timing"].startswith("app;dur="), path
        for needle in needles:
            assert needle in page.text, (path, needle)
        for view in ("runners", "shards", "entities", "jobs", "workflows", "events",
                     "webhooks", "schedules", "health"):
            assert f'data-testid="nav-{view}"' in page.text, (path, view)
    job_page = (await dash.get(f"/jobs/{ids['dead']}")).text
    assert 'data-testid="job-state">dead<' in job_page
    assert "<h1>Job " in job_page


async def test_the_jobs_list_filters_by_state_and_name_and_pages(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    ids = await fill(shop)
    dead = (await dash.get("/jobs?state=dead")).text
    assert f"job-row-{ids['dead']}" in dead and f"job-row-{ids['ok']}" not in dead
    running = (await dash.get("/jobs?state=running&name=slow")).text
    assert f"job-row-{ids['running']}" in running and f"job-row-{ids['dead']}" not in running
    done = (await dash.get("/jobs?state=done")).text
    assert f"job-row-{ids['ok']}" in done and f"job-row-{ids['running']}" not in done
    older = (await dash.get(f"/jobs?before={ids['running']}")).text  # ids below it only
    assert f"job-row-{ids['dead']}" in older and f"job-row-{ids['running']}" not in older
    # counts by name, from the capped tag counts
    row = dead.split('data-testid="job-count-row-email.send"')[1].split("</tr>")[0]
    assert ">1<" in row  # one dead


async def test_unknown_things_are_404_pages_and_bad_filters_400(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    for path in ("/nothing", "/jobs/123456789", "/workflows/nope", "/events/nope",
                 "/webhooks/ep_999", "/live/nothing", "/static/secret.txt", "/jobs/1/2"):
        page = await dash.get(path)
        assert page.status_code == 404, path
        assert 'data-testid="nav-runners"' in page.text and "<h1>Not found</h1>" in page.text
        assert page.headers["server-timing"].startswith("app;dur=")
    for path in ("/jobs?state=sleeping", "/jobs?before=abc", "/workflows?state=x"):
        assert (await dash.get(path)).status_code == 400, path
    assert (await dash.post("/jobs")).status_code == 405


def test_templates_and_static_files_ship_in_the_package() -> None:
    package = resources.files("covey.dashboard")
    for name in ("base.html", "page.html", "confirm.html", "views/jobs.html"):
        assert (package / "templates" / name).is_file(), name
    for name in ("htmx.min.js", "sse.min.js", "dashboard.css", "README.md"):
        assert (package / "static" / name).is_file(), name
    assert "2.0.11" in (package / "static" / "htmx.min.js").read_text()[:200]


def test_the_workflow_listing_reads_start_messages_as_workflows_stores_them() -> None:
    assert START_TAG == workflow_definition.START_TAG
    assert NAME_HEADER == workflow_definition.NAME_HEADER
