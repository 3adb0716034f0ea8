"""storage.inspection: the operators' reads (the dashboard), on every backend.

Shards with their owners and acquisition times; per-tag counts of queued, running
and dead messages with a cap; pages of dead and pending messages, newest first,
by tag or across tags, with keyset paging.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from covey.core import ClusterError, Reason, TestClock
from covey.storage import Fence, Message, Reply, ShardRow, Storage, TagCount

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, S3, msg
from .conftest import MakeStorage

JOBS = "covey.Job"


async def test_shards_show_owner_epoch_and_when_it_was_acquired(
    make_storage: MakeStorage, clock: TestClock,
) -> None:
    first = await make_storage()
    second = await make_storage()
    assert await first.inspection.shards() == []
    taken_at = clock.now()
    held = await first.runners.acquire(RUNNER_A, [S1, S2])
    await clock.advance(5)
    assert await first.runners.acquire(RUNNER_A, [S1, S2]) == held  # a renewal
    assert await second.inspection.shards() == [
        ShardRow("default", 1, held[S1], str(RUNNER_A), taken_at),
        ShardRow("default", 2, held[S2], str(RUNNER_A), taken_at),
    ]
    await first.runners.release(RUNNER_A, [S1])
    moved_at = clock.now()
    moved = await second.runners.acquire(RUNNER_B, [S1, S3])
    rows = {row.shard: row for row in await first.inspection.shards()}
    assert rows[1] == ShardRow("default", 1, moved[S1], str(RUNNER_B), moved_at)
    assert moved[S1] > held[S1]
    assert rows[2] == ShardRow("default", 2, held[S2], str(RUNNER_A), taken_at)
    assert rows[3] == ShardRow("default", 3, moved[S3], str(RUNNER_B), moved_at)
    assert list(rows) == [1, 2, 3]


class Seeded:
    """Messages of two job names and one other entity type, in every state."""

    def __init__(self) -> None:
        self.running = [msg(f"r{n}", entity_type=JOBS, tag="mail", shard=S2) for n in range(2)]
        self.queued = [msg(f"q{n}", entity_type=JOBS, tag="mail") for n in range(3)]
        self.delayed = msg("later", entity_type=JOBS, tag="sms", deliver_at=4e9)
        self.dead_mail = [msg(f"x{n}", entity_type=JOBS, tag="mail") for n in range(2)]
        self.dead_sms = [msg("y0", entity_type=JOBS, tag="sms")]
        self.done = [msg("d0", entity_type=JOBS, tag="mail"), msg("d1", entity_type=JOBS,
                                                                   tag="push")]
        self.other = [msg("a1", entity_type="Account", tag="mail"),
                      msg("a2", entity_type="Account", tag="mail")]

    @property
    def every(self) -> list[Message]:
        # saved in this order: the running ones have the lowest ids
        return [*self.running, *self.queued, self.delayed, *self.dead_mail, *self.dead_sms,
                *self.done, *self.other]

    async def store(self, storage: Storage) -> None:
        await storage.messages.save_requests(self.every)
        held = await storage.runners.acquire(RUNNER_A, [S1, S2])
        for m in self.dead_mail + self.dead_sms + [self.other[1]]:
            await storage.messages.save_reply(Reply(m.id, b"boom", True), Fence(S1, held[S1]))
        for m in self.done:
            await storage.messages.save_reply(Reply(m.id, b"ok"), Fence(S1, held[S1]))
        leased = await storage.messages.unprocessed([S2], limit=10)  # live leases now
        assert {m.id for m in leased} == {m.id for m in self.running}


@pytest.fixture
async def seeded(storage: Storage) -> Seeded:
    seeded = Seeded()
    await seeded.store(storage)
    return seeded


def ids(records: list[Any]) -> list[int]:
    return [r.message.id for r in records]


async def test_tag_counts_by_state_leave_out_idle_tags_and_other_types(
    storage: Storage, seeded: Seeded, clock: TestClock,
) -> None:
    assert await storage.inspection.tag_counts(JOBS, now=clock.now()) == [
        TagCount("mail", queued=3, running=2, dead=2, capped=False),
        TagCount("sms", queued=1, running=0, dead=1, capped=False),
    ]
    # once the leases ran out, the running ones count as queued again
    later = await storage.inspection.tag_counts(JOBS, now=clock.now() + 3600)
    assert later[0] == TagCount("mail", queued=5, running=0, dead=2, capped=False)
    assert await storage.inspection.tag_counts("Account", now=clock.now()) == [
        TagCount("mail", queued=1, running=0, dead=1, capped=False)]
    assert await storage.inspection.tag_counts("Nobody", now=clock.now()) == []


async def test_a_run_begun_without_a_lease_counts_as_running(
    storage: Storage, seeded: Seeded, clock: TestClock,
) -> None:
    # a job pushed to its runner takes no lease; its recorded start says it runs
    await storage.messages.mark_started([seeded.queued[0].id])
    later = await storage.inspection.tag_counts(JOBS, now=clock.now() + 3600)
    assert later[0] == TagCount("mail", queued=4, running=1, dead=2, capped=False)


async def test_tag_counts_stop_at_the_cap_and_say_so(
    storage: Storage, seeded: Seeded, clock: TestClock,
) -> None:
    counts = await storage.inspection.tag_counts(JOBS, now=clock.now(), cap=2)
    # the oldest unprocessed rows are read first: here the two running ones
    assert counts == [TagCount("mail", queued=0, running=2, dead=2, capped=True),
                      TagCount("sms", queued=1, running=0, dead=1, capped=False)]


async def test_dead_messages_newest_first_by_tag_or_across_tags(
    storage: Storage, seeded: Seeded,
) -> None:
    dead = seeded.dead_mail + seeded.dead_sms
    newest_first = sorted((m.id for m in dead), reverse=True)
    records = await storage.inspection.dead_messages(JOBS)
    assert ids(records) == newest_first
    assert all(r.reply is not None and r.reply.is_error for r in records)
    assert records[0].reply is not None and records[0].reply.payload == b"boom"
    assert ids(await storage.inspection.dead_messages(JOBS, tag="mail")) == sorted(
        (m.id for m in seeded.dead_mail), reverse=True)
    assert await storage.inspection.dead_messages(JOBS, tag="push") == []
    assert ids(await storage.inspection.dead_messages("Account")) == [seeded.other[1].id]


async def test_pending_messages_hold_queued_delayed_and_running_only(
    storage: Storage, seeded: Seeded,
) -> None:
    pending = [*seeded.running, *seeded.queued, seeded.delayed]
    records = await storage.inspection.pending_messages(JOBS)
    assert ids(records) == sorted((m.id for m in pending), reverse=True)
    assert all(r.reply is None for r in records)
    leased = {r.message.id for r in records if r.lease_until is not None}
    assert leased == {m.id for m in seeded.running}
    assert ids(await storage.inspection.pending_messages(JOBS, tag="sms")) == [
        seeded.delayed.id]
    assert await storage.inspection.pending_messages(JOBS, tag="push") == []


@pytest.mark.parametrize("which", ["pending_messages", "dead_messages"])
@pytest.mark.parametrize("tag", [None, "mail"])
async def test_pages_follow_each_other_without_gaps(
    storage: Storage, seeded: Seeded, which: str, tag: str | None,
) -> None:
    page = getattr(storage.inspection, which)
    everything = ids(await page(JOBS, tag=tag, limit=100))
    assert len(everything) >= 2
    walked: list[int] = []
    before: int | None = None
    while True:
        records = await page(JOBS, tag=tag, limit=2, before_id=before)
        assert len(records) <= 2
        if not records:
            break
        walked += ids(records)
        before = records[-1].message.id
    assert walked == everything
    assert await page(JOBS, tag=tag, limit=0) == []


@pytest.mark.parametrize(("call", "field"), [
    (lambda i: i.tag_counts(JOBS, now=math.nan), "now"),
    (lambda i: i.tag_counts(JOBS, now=-1.0), "now"),
    (lambda i: i.tag_counts(JOBS, now=1.0, cap=0), "cap"),
    (lambda i: i.tag_counts(JOBS, now=1.0, cap=True), "cap"),
    (lambda i: i.tag_counts(7, now=1.0), "entity_type"),
    (lambda i: i.dead_messages(JOBS, limit=1001), "limit"),
    (lambda i: i.dead_messages(JOBS, limit=-1), "limit"),
    (lambda i: i.pending_messages(JOBS, before_id=0), "before_id"),
    (lambda i: i.pending_messages(JOBS, tag="a\x00b"), "tag"),
    (lambda i: i.pending_messages(None), "entity_type"),
])
async def test_malformed_arguments_are_refused_by_name(
    storage: Storage, call: Any, field: str,
) -> None:
    with pytest.raises(ClusterError) as info:
        await call(storage.inspection)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == field
