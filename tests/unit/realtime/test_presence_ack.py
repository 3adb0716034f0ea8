"""Stored user messages wait in the mailbox until a client acknowledges them: a
connection that took one and died leaves it for the next connection; each
connection is handed a stored message once; the mailbox follows in windows as
acks make room; bad acks and failed deletes never break anything."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Collection

import pytest

from covey import RealtimeError, Reason
from covey.realtime import _presence
from covey.realtime._naming import scoped
from covey.testing import TestCluster

_ids = itertools.count(1)
KEY = scoped("", "u1")


class AckingConnection:
    """A user connection whose client acknowledges what it was handed (on ``ack()``)."""

    def __init__(self) -> None:
        self.id = f"conn-{next(_ids)}"
        self.got: list[str] = []

    def deliver(self, name: str, payload: bytes, *, mid: str | None = None) -> bool:
        assert mid is not None
        self.got.append(mid)
        return True

    async def ack(self, presence: _presence.Presence, mids: Collection[str] | None = None
                  ) -> None:
        await presence.acked(KEY, list(self.got if mids is None else mids))


async def stored(tc: TestCluster) -> list[str]:
    return [mail.id for mail in await tc.storage.streams.mail(KEY, now=tc.clock.now())]


async def test_a_stored_message_a_connection_took_stays_until_acknowledged() -> None:
    async with TestCluster(runners=2) as tc:
        a, b = tc.runners
        dying = AckingConnection()
        key = await a.presence.add("u1", dying)
        assert key == KEY
        outcome = await tc.client_member.send_to_user("u1", "hi", id="m-1", store=True)
        assert outcome == "delivered" and dying.got == ["m-1"]
        assert await stored(tc) == ["m-1"]  # taken, not acknowledged: kept
        await a.presence.remove(key, dying)  # its client never read it
        moved = AckingConnection()
        async with b.presence.attach("u1", moved):
            assert moved.got == ["m-1"]  # handed to the next connection
            await moved.ack(b.presence)
            assert await stored(tc) == []
        later = AckingConnection()
        async with b.presence.attach("u1", later):
            assert later.got == []


async def test_without_store_a_message_is_fire_and_forget() -> None:
    async with TestCluster(runners=1) as tc:
        conn = AckingConnection()
        async with tc.runners[0].presence.attach("u1", conn):
            assert await tc.client_member.send_to_user("u1", "hi", id="m-1") == "delivered"
            assert await stored(tc) == []
        assert conn.got == ["m-1"]


async def test_each_connection_is_handed_a_stored_message_once() -> None:
    async with TestCluster(runners=2) as tc:
        a, b = tc.runners
        on_a, on_b = AckingConnection(), AckingConnection()
        async with a.presence.attach("u1", on_a), b.presence.attach("u1", on_b):
            assert await tc.client_member.send_to_user("u1", 1, id="m-1",
                                                        store=True) == "delivered"
            # more connections attach on both pods: each reads the mailbox again
            late_a, late_b = AckingConnection(), AckingConnection()
            async with a.presence.attach("u1", late_a), b.presence.attach("u1", late_b):
                assert await a.send_to_user("u1", 2, id="m-2", store=True) == "delivered"
                await b.presence.handle(None, {"k": _presence.MAIL_KIND, "u": KEY})
        assert on_a.got == on_b.got == late_a.got == late_b.got == ["m-1", "m-2"]


async def test_the_mailbox_follows_in_windows_as_acks_make_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_presence, "FLUSH_WINDOW", 3)
    async with TestCluster(runners=1) as tc:
        presence = tc.runners[0].presence
        for i in range(7):
            assert await tc.client_member.send_to_user("u1", i, id=f"m-{i}",
                                                        store=True) == "stored"
        conn = AckingConnection()
        async with presence.attach("u1", conn):
            assert conn.got == ["m-0", "m-1", "m-2"]
            await conn.ack(presence, ["m-0", "m-1"])
            assert conn.got == ["m-0", "m-1", "m-2", "m-3", "m-4"]  # m-2 not again
            await conn.ack(presence)
            assert conn.got == [f"m-{i}" for i in range(7)]
            await conn.ack(presence)
        assert await stored(tc) == []


async def test_acks_that_name_no_mail_do_not_spoil_the_batch() -> None:
    async with TestCluster(runners=1) as tc:
        presence = tc.runners[0].presence
        for mid in ("m-1", "m-2"):
            await tc.client_member.send_to_user("u1", 0, id=mid, store=True)
        await presence.acked(KEY, ["m-1", "", "x" * 300, "a\x00b", "\ud800", "nope"])
        assert await stored(tc) == ["m-2"]


async def test_acks_arriving_during_a_delete_go_together_in_the_next() -> None:
    async with TestCluster(runners=1) as tc:
        presence = tc.runners[0].presence
        streams = tc.storage.streams
        for i in range(4):
            await tc.client_member.send_to_user("u1", 0, id=f"m-{i}", store=True)
        calls: list[list[str]] = []
        started, gate = asyncio.Event(), asyncio.Event()
        real = streams.delete_mail

        async def slow_delete(key: str, ids: Collection[str]) -> int:
            calls.append(sorted(ids))
            started.set()
            await gate.wait()
            return await real(key, ids)

        streams.delete_mail = slow_delete  # type: ignore[method-assign]
        first = asyncio.create_task(presence.acked(KEY, ["m-0"]))
        await asyncio.wait_for(started.wait(), 10)
        await presence.acked(KEY, ["m-1", "m-2"])  # returns at once: the running one takes it
        await presence.acked(KEY, ["m-3"])
        gate.set()
        await first
        assert calls == [["m-0"], ["m-1", "m-2", "m-3"]]
        assert await stored(tc) == []


async def test_a_failed_delete_is_logged_and_the_mail_is_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    async with TestCluster(runners=1) as tc:
        await tc.client_member.send_to_user("u1", 0, id="m-1", store=True)

        async def failing(key: str, ids: Collection[str]) -> int:
            raise OSError("the database is away")

        tc.storage.streams.delete_mail = failing  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="covey.realtime"):
            await tc.runners[0].presence.acked(KEY, ["m-1"])
        assert "deleting 1 acknowledged messages failed" in caplog.text
        assert await stored(tc) == ["m-1"]


@pytest.mark.parametrize("mid", ["", "x" * 201, "a\x00b", 42])
async def test_a_bad_message_id_is_refused(mid: object) -> None:
    async with TestCluster(runners=1) as tc:
        with pytest.raises(RealtimeError) as caught:
            await tc.client_member.send_to_user("u1", "hi", id=mid, store=True)  # type: ignore[arg-type]
        assert caught.value.reason is Reason.INVALID_ARGUMENT
        assert caught.value.details["field"] == "id"


async def test_a_mailbox_bigger_than_a_send_queue_follows_in_halves_as_acks_come() -> None:
    # 20 messages of 100 kB: twice a connection's 1 MiB queue. A flush that handed them
    # all would overflow it (closed, reconnected, overflowed again, for ever).
    async with TestCluster(runners=1) as tc:
        member = tc.runners[0]
        big = "x" * 100_000
        for n in range(20):
            assert await tc.client_member.send_to_user("u1", big, id=f"m-{n}",
                                                       store=True) == "stored"
        conn = AckingConnection()
        async with member.presence.attach("u1", conn):
            budget = member.config.realtime.buffer_bytes // 2
            first = list(conn.got)
            assert 1 <= len(first) <= budget // 100_000 + 1 < 20
            for _ in range(40):  # each ack makes room for the next half queue
                if len(conn.got) == 20:
                    break
                await conn.ack(member.presence)
            assert conn.got == [f"m-{n}" for n in range(20)]
            await conn.ack(member.presence)
            assert await stored(tc) == []
