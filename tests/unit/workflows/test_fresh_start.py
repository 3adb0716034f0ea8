"""A start message pushed as fresh (no journal read first) that meets a journal
after all: its first write finds the journal, the run starts over from it."""

from __future__ import annotations

import dataclasses

import pytest

import covey
from covey.sharding.runtime import Envelope
from covey.testing import TestCluster
from covey.workflows import _context
from covey.workflows._definition import FRESH_HEADER
from tests.unit._waiting import until

RUNS: list[str] = []


async def first() -> str:
    RUNS.append("first")
    return "one"


def configure(cluster: covey.Cluster) -> None:
    @cluster.workflow("fresh")
    async def fresh(ctx: covey.WorkflowContext, _: None) -> str:
        value = await ctx.step(first)
        got = await ctx.recv("go")
        return f"{value}:{got}"


async def test_a_fresh_push_for_an_existing_journal_runs_from_that_journal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_context, "IN_PROCESS_WAIT", 0.05)  # suspend at once
    RUNS.clear()
    async with TestCluster(runners=1, configure=configure) as tc:
        client = tc.client_member
        handle = await client.start("fresh", None, workflow_id="f1")

        async def waiting() -> bool:
            return (await handle.status()).state == "waiting"

        start = await client.workflows.find_start("f1")
        assert start is not None

        async def suspended() -> bool:  # its start message rescheduled: not running here
            record = (await tc.storage.messages.inspect([start.id]))[start.id]
            return (record.message.deliver_at or 0.0) > tc.clock.now()

        await until(suspended)
        # a late fresh push: it assumes no journal, runs the first step again (steps
        # run at least once), and its first write finds the journal
        fresh = dataclasses.replace(start, headers={**start.headers, FRESH_HEADER: "1"},
                                    deliver_at=None)
        await tc.runners[0].messenger.push_many([Envelope(fresh, persisted=True)])
        await until(lambda: RUNS.count("first") == 2)
        await until(waiting)
        await client.send("f1", "go", "two")
        assert await handle.result(timeout=10) == "one:two"
        entries = [(e.key, e.status) for e in await client.workflows.journal("f1")]
        assert entries == [("first#1", "done"), ("recv:go#1", "done")]
