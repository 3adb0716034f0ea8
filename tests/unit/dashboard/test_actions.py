"""Mutations: confirmation first, then the public API, an audit line and a flash."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from .conftest import Email, OrderPlaced, Shop, until


def csrf_of(html: str) -> str:
    match = re.search(r'name="covey-csrf" content="([0-9a-f]+)"', html)
    assert match is not None, "no CSRF token on the page"
    return match.group(1)


async def post(dash: httpx.AsyncClient, action: str, confirm: bool = True,
               **fields: object) -> httpx.Response:
    token = csrf_of((await dash.get("/runners")).text)
    data = {"csrf": token, **{k: str(v) for k, v in fields.items()}}
    if confirm:
        data["confirm"] = "yes"
    return await dash.post(f"/actions/{action}", data=data)


async def dead_job(shop: Shop) -> int:
    shop.fail.add("bad@x")
    handle = await shop.cluster.jobs.submit("email.send", Email(to="bad@x"))

    async def is_dead() -> bool:
        return (await shop.cluster.jobs.status(handle.id)).state == "dead"

    await until(is_dead)
    return handle.id


async def test_retry_asks_for_confirmation_first_and_does_nothing_until_confirmed(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    job_id = await dead_job(shop)
    page = await dash.get(f"/jobs/{job_id}")
    assert f'data-testid="retry-{job_id}"' in page.text
    asked = await post(dash, "retry-job", confirm=False, job_id=job_id)
    assert asked.status_code == 200
    assert f"Requeue dead job {job_id}" in asked.text
    assert 'data-testid="confirm"' in asked.text and 'name="confirm" value="yes"' in asked.text
    assert f'href="/jobs/{job_id}"' in asked.text  # the Cancel link
    assert (await shop.cluster.jobs.status(job_id)).state == "dead"  # nothing happened


async def test_a_confirmed_retry_requeues_the_job_logs_the_operator_and_flashes(
        shop: Shop, dash: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    job_id = await dead_job(shop)
    shop.fail.clear()
    with caplog.at_level(logging.INFO, logger="covey.dashboard"):
        done = await post(dash, "retry-job", job_id=job_id)
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}"

    async def succeeded() -> bool:
        return (await shop.cluster.jobs.status(job_id)).state == "succeeded"

    await until(succeeded)
    assert shop.sent == ["bad@x"]
    lines = [r.getMessage() for r in caplog.records if r.name == "covey.dashboard"]
    assert lines == [f"dashboard: alice retry-job job {job_id} -> job {job_id} (email.send) "
                     "requeued from the dead-letter"]
    page = await dash.get(f"/jobs/{job_id}")
    assert 'data-testid="flash"' in page.text and "requeued" in page.text
    assert 'data-testid="flash"' not in (await dash.get(f"/jobs/{job_id}")).text  # once


async def test_a_covey_error_becomes_the_flash_not_a_500(
        shop: Shop, dash: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    handle = await shop.cluster.jobs.submit("email.send", Email(to="ok@x"))
    await until(lambda: "ok@x" in shop.sent)
    with caplog.at_level(logging.INFO, logger="covey.dashboard"):
        done = await post(dash, "retry-job", job_id=handle.id)  # not dead
    assert done.status_code == 303
    page = await dash.get(done.headers["location"])
    flash = page.text.split('data-testid="flash"')[1].split("</div>")[0]
    assert "invalid_argument" in flash and "not dead" in flash
    assert any("-> failed (invalid_argument" in r.getMessage() for r in caplog.records)


async def test_an_unknown_action_or_a_bad_field_is_a_400_page(dash: httpx.AsyncClient) -> None:
    unknown = await post(dash, "drop-database")
    bad_id = await post(dash, "retry-job", job_id="12abc")
    no_id = await post(dash, "cancel-job")
    bad_json = await post(dash, "signal-workflow", workflow_id="wf", topic="t", payload="{")
    assert [r.status_code for r in (unknown, bad_id, no_id, bad_json)] == [400] * 4
    assert "job_id" in bad_id.text and "payload" in bad_json.text


async def test_cancel_a_queued_job_and_purge_the_dead(shop: Shop,
                                                      dash: httpx.AsyncClient) -> None:
    slow = await shop.cluster.jobs.submit("slow", Email(to="x"))
    dead = await dead_job(shop)
    cancelled = await post(dash, "cancel-job", job_id=slow.id)
    assert cancelled.status_code == 303
    assert (await shop.cluster.jobs.status(slow.id)).state == "cancelled"
    purged = await post(dash, "purge-jobs", name="email.send")
    assert purged.headers["location"] == "/jobs?state=dead&name=email.send"
    page = await dash.get(purged.headers["location"])
    assert "1 dead job(s) deleted" in page.text
    assert f'data-testid="job-row-{dead}"' not in page.text


async def test_signal_a_workflow_then_it_completes(shop: Shop, dash: httpx.AsyncClient) -> None:
    await shop.cluster.start("checkout", "o-1", workflow_id="wf-1")
    page = await dash.get("/workflows/wf-1")
    assert 'data-testid="signal-wf-1"' in page.text
    sent = await post(dash, "signal-workflow", workflow_id="wf-1", topic="paid",
                      payload='{"amount": 5}')
    assert sent.status_code == 303 and sent.headers["location"] == "/workflows/wf-1"
    assert await shop.cluster.workflows.result("wf-1", timeout=10) == "o-1 paid {'amount': 5}"


async def test_cancel_a_workflow(shop: Shop, dash: httpx.AsyncClient) -> None:
    await shop.cluster.start("checkout", "o-2", workflow_id="wf-2")
    done = await post(dash, "cancel-workflow", workflow_id="wf-2")
    assert done.status_code == 303
    assert (await shop.cluster.workflows.status("wf-2")).state == "cancelled"
    resume = await post(dash, "resume-workflow", workflow_id="wf-2")  # not parked
    page = await dash.get(resume.headers["location"])
    assert "invalid_transition" in page.text


async def test_retry_and_purge_a_dead_event_delivery(shop: Shop,
                                                     dash: httpx.AsyncClient) -> None:
    await shop.cluster.publish(OrderPlaced(order_id="bad-1"))

    async def dead() -> bool:
        return bool(await shop.cluster.events.dead_letters("billing"))

    await until(dead)
    letter = (await shop.cluster.events.dead_letters("billing"))[0]
    page = await dash.get("/events/billing")
    assert f'data-testid="retry-{letter.message_id}"' in page.text
    retried = await post(dash, "retry-event", message_id=letter.message_id, group="billing")
    assert retried.headers["location"] == "/events/billing"
    assert "runs again" in (await dash.get("/events/billing")).text
    replay = await post(dash, "replay-group", group="billing", from_position="0")
    assert "replays 1 topic(s)" in (await dash.get(replay.headers["location"])).text
    await until(dead)
    purged = await post(dash, "purge-events", group="billing")
    assert "deleted" in (await dash.get(purged.headers["location"])).text


async def test_disable_and_enable_a_webhook_endpoint(shop: Shop,
                                                     dash: httpx.AsyncClient) -> None:
    endpoint = await shop.cluster.webhooks.add_endpoint("https://example.com/hook")
    await post(dash, "disable-endpoint", endpoint_id=endpoint.id)
    assert not (await shop.cluster.webhooks.endpoint(endpoint.id)).enabled
    page = await dash.get(f"/webhooks/{endpoint.id}")
    assert f'data-testid="enable-{endpoint.id}"' in page.text
    await post(dash, "enable-endpoint", endpoint_id=endpoint.id)
    assert (await shop.cluster.webhooks.endpoint(endpoint.id)).enabled


async def test_a_dead_webhook_delivery_retried_from_the_jobs_view_keeps_its_attempts(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    # webhook deliveries are jobs too: cluster.jobs.retry_dead hands them to
    # cluster.webhooks.replay, which keeps the record of the earlier attempts
    from covey.core import SystemClock
    from tests.unit.webhooks._stub import Answer, StubReceiver, serving

    async with serving(StubReceiver(SystemClock().now)) as stub:
        stub.default = Answer(500)
        hooks = shop.cluster.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[])
        delivery_id = (await hooks.send("invoice.paid", {"n": 1})).deliveries[endpoint.id]

        async def state_is(state: str) -> bool:
            return (await hooks.delivery(delivery_id)).state == state

        await until(lambda: state_is("dead"))
        stub.default = Answer(204)
        done = await post(dash, "retry-job", job_id=delivery_id)
        assert "requeued" in (await dash.get(done.headers["location"])).text
        await until(lambda: state_is("delivered"))
    outcomes = [a.outcome for a in (await hooks.delivery(delivery_id)).attempts]
    assert outcomes == ["http_error", "delivered"]
