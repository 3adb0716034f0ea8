"""What the dashboard's browser test puts in the cluster before it opens a page.

:func:`seed` runs a client-only cluster member on the pods' database and, through
the public API only, leaves the store as the views are asserted against:

- jobs: three ``report`` runs succeeded, two ``report`` jobs queued for an hour
  from now, ``doomed`` and ``gated`` dead-lettered after their two attempts;
- workflows: ``order-done`` completed (signalled ``approve``), ``order-waiting``
  waiting for that signal after its ``prepare`` step;
- events: the ``pinger`` group handled ping ``fine`` and dead-lettered ``bad``;
- entities: three ``Counter`` instances bumped (active on the pods);
- webhooks: endpoint ``sink`` (answers 204) delivered ``invoice.paid``; endpoint
  ``broken`` (answers 500, one retry 0.1 s later) dead-lettered it.

Every wait is a condition polled with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import covey
from covey.core import CoveyConfig

from .dashboard_pod import Approval, Counter, Ping, Work, covey_env, declare

DEADLINE = 30.0  # seconds for anything the pods do in the background


@dataclass(frozen=True)
class Seeded:
    """The ids of what :func:`seed` made."""

    report_id: int
    doomed_id: int
    gated_id: int
    sink_id: str
    broken_id: str
    poison_event: int


async def until(what: str, check: Callable[[], Awaitable[bool]],
                deadline: float = DEADLINE) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``deadline`` seconds.

    (The test uses it too: a page's live fragment may still be settling.)
    """
    give_up = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.1)


async def seed(database_url: str, pod_url: str) -> Seeded:
    """Fill the store (module docstring); the ids of what it made."""
    client = covey.Cluster(CoveyConfig.from_env(covey_env(database_url)), client_only=True)
    approval = declare(client)
    async with client:
        jobs = client.jobs
        reports = [await jobs.submit("report", Work(key=f"r{n}")) for n in range(3)]
        for handle in reports:
            await handle.result(timeout=DEADLINE)
        for n in range(2):
            await jobs.submit("report", Work(key=f"later{n}"), delay=3600)
        doomed = await jobs.submit("doomed", Work(key="d1"))
        gated = await jobs.submit("gated", Work(key="g1"))

        done = await client.start(approval, Approval(order="done"), workflow_id="order-done")
        await client.start(approval, Approval(order="waiting"), workflow_id="order-waiting")
        await client.send("order-done", "approve", "yes")
        assert await done.result(timeout=DEADLINE) == "done: yes"

        fine = await client.publish(Ping(key="fine"))
        bad = await client.publish(Ping(key="bad", poison=True))
        for n in range(3):
            assert await client.client(Counter, f"c{n}").bump() == 1

        webhooks = client.webhooks
        sink = await webhooks.add_endpoint(f"{pod_url}/hooks/sink", types="invoice.*",
                                           description="sink", allow_private=True)
        broken = await webhooks.add_endpoint(f"{pod_url}/hooks/broken", types="invoice.*",
                                             description="broken", allow_private=True,
                                             schedule=[0.1])
        await webhooks.send("invoice.paid", {"invoice": "in_1", "amount": 42})

        async def dead(job_id: int) -> bool:
            return (await jobs.status(job_id)).state == "dead"

        async def waiting() -> bool:
            return (await client.workflows.status("order-waiting")).state == "waiting"

        async def ping_dead() -> bool:
            return any(d.event_id == bad for d in await client.events.dead_letters("pinger"))

        async def pings_handled() -> bool:
            stats = (await client.events.lag("pinger")).get("pinger")
            return stats is not None and stats.lag == 0

        async def delivered() -> bool:
            states = [d.state for d in await webhooks.deliveries(endpoint=sink.id)]
            return states == ["delivered"]

        async def webhook_dead() -> bool:
            return len(await webhooks.dead_letters(endpoint=broken.id)) == 1

        await until("job doomed dead", lambda: dead(doomed.id))
        await until("job gated dead", lambda: dead(gated.id))
        await until("order-waiting waits for its signal", waiting)
        await until(f"ping {bad} dead-lettered", ping_dead)
        await until(f"ping {fine} handled", pings_handled)
        await until("invoice.paid delivered to sink", delivered)
        await until("invoice.paid dead-lettered for broken", webhook_dead)
    return Seeded(report_id=reports[0].id, doomed_id=doomed.id, gated_id=gated.id,
                  sink_id=sink.id, broken_id=broken.id, poison_event=bad)
