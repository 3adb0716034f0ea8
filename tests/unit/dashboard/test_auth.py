"""Who may use the dashboard: the authorization hook, development mode, 403, CSRF."""

from __future__ import annotations

import pytest

from covey.core import ClusterError, Reason
from covey.dashboard import Dashboard, DashboardRequest

from .conftest import Shop, build, client_for, operator_header


def test_a_dashboard_without_a_hook_refuses_to_be_built_and_says_how_to_fix_it() -> None:
    shop = build()
    with pytest.raises(ClusterError) as caught:
        shop.cluster.dashboard()
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == "authorize"
    assert "development=True" in str(caught.value) and "authorize=" in str(caught.value)


async def test_development_mode_serves_everyone_as_the_development_operator(shop: Shop) -> None:
    async with client_for(shop.cluster.dashboard(development=True), operator=None) as client:
        page = await client.get("/runners")
    assert page.status_code == 200
    assert 'data-testid="operator">development<' in page.text


async def test_a_request_the_hook_refuses_gets_a_403_page_and_the_hook_sees_it(
        shop: Shop) -> None:
    seen: list[DashboardRequest] = []

    async def only_alice(request: DashboardRequest) -> str | None:  # an async hook
        seen.append(request)
        return "alice" if request.headers.get("x-operator") == "alice" else None

    app = shop.cluster.dashboard(authorize=only_alice)
    async with client_for(app, operator="mallory") as client:
        refused = await client.get("/jobs?state=dead")
        static = await client.get("/static/dashboard.css")  # vendored files are public
    async with client_for(app, operator="alice") as client:
        allowed = await client.get("/jobs")
    assert refused.status_code == 403 and "not allowed" in refused.text
    assert static.status_code == 200
    assert allowed.status_code == 200 and 'data-testid="operator">alice<' in allowed.text
    assert seen[0].method == "GET" and seen[0].path == "/jobs"
    assert seen[0].headers["x-operator"] == "mallory"


async def test_pages_link_below_the_mount_point(shop: Shop) -> None:
    app = shop.cluster.dashboard(authorize=operator_header)
    async with client_for(app, root="/ops") as client:
        home = await client.get("/ops/")
        page = await client.get("/ops/jobs")
    assert home.status_code == 303 and home.headers["location"] == "/ops/runners"
    assert 'href="/ops/workflows"' in page.text and 'src="/ops/static/htmx.min.js"' in page.text
    assert 'sse-connect="/ops/live/jobs"' in page.text


async def test_an_action_without_the_right_csrf_token_is_refused(shop: Shop) -> None:
    app = shop.cluster.dashboard(authorize=operator_header)
    async with client_for(app, operator="alice") as client:
        missing = await client.post("/actions/purge-jobs", data={"confirm": "yes"})
        page = await client.get("/jobs")
    token = page.text.split('name="covey-csrf" content="')[1].split('"')[0]
    async with client_for(app, operator="bob") as client:  # alice's token is not bob's
        stolen = await client.post("/actions/purge-jobs", data={"csrf": token,
                                                                "confirm": "yes"})
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert stolen.status_code == 403


def test_a_hook_that_is_not_callable_is_refused() -> None:
    shop = build()
    with pytest.raises(ClusterError) as caught:
        Dashboard(shop.cluster, authorize="alice")  # type: ignore[arg-type]
    assert caught.value.details["field"] == "authorize"


async def test_a_form_rendered_by_one_pod_is_accepted_by_another(shop: Shop) -> None:
    # Behind a load balancer the confirmation may reach another pod: every pod signs
    # with the one secret in the shared store.
    pod_a = shop.cluster.dashboard(authorize=operator_header)
    pod_b = shop.cluster.dashboard(authorize=operator_header)
    async with client_for(pod_a) as client:
        page = await client.get("/jobs")
    token = page.text.split('name="covey-csrf" content="')[1].split('"')[0]
    async with client_for(pod_b) as client:
        done = await client.post("/actions/purge-jobs", data={"csrf": token, "confirm": "yes",
                                                               "name": "email.send"})
    assert done.status_code == 303, done.text
