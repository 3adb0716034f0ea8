"""send_to_user across the runners of a TestCluster: delivered to every connection of
the user on whichever runner holds it, stored while offline, dropped otherwise."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from covey import RealtimeError, Reason
from covey.realtime._naming import scoped
from covey.testing import TestCluster

_ids = itertools.count(1)


class FakeConnection:
    """What covey's WebSocket connection offers presence: ``id`` and ``deliver``."""

    def __init__(self, *, accept: bool = True) -> None:
        self.id = f"conn-{next(_ids)}"
        self.accept = accept
        self.got: list[tuple[str, bytes, str | None]] = []

    def deliver(self, name: str, payload: bytes, *, mid: str | None = None) -> bool:
        if self.accept:
            self.got.append((name, payload, mid))
        return self.accept


async def test_a_message_reaches_every_connection_of_the_user_on_any_pod() -> None:
    async with TestCluster(runners=2) as tc:
        a, b = tc.runners
        on_a, on_b, stranger = FakeConnection(), FakeConnection(), FakeConnection()
        async with a.presence.attach("u1", on_a), b.presence.attach("u1", on_b), \
                b.presence.attach("u2", stranger):
            sender = tc.client_member
            assert await sender.send_to_user("u1", {"text": "hi"}, push="notice",
                                             id="m-1") == "delivered"
            assert on_a.got == on_b.got == [("notice", b'{"text":"hi"}', "m-1")]
            assert stranger.got == []
        # detached: nobody to deliver to
        assert await tc.client_member.send_to_user("u1", "late") == "dropped"
        assert on_a.got == on_b.got == [("notice", b'{"text":"hi"}', "m-1")]


async def test_messages_for_an_offline_user_are_stored_and_handed_over_in_order() -> None:
    async with TestCluster(runners=2) as tc:
        a, _ = tc.runners
        sender = tc.client_member
        outcomes = [await sender.send_to_user("u1", i, id=f"m-{i}", store=True, ttl=60)
                    for i in range(5)]
        assert outcomes == ["stored"] * 5
        # the same id again is kept once
        assert await sender.send_to_user("u1", 0, id="m-0", store=True) == "stored"
        conn = FakeConnection()
        async with a.presence.attach("u1", conn):
            assert [mid for _, _, mid in conn.got] == [f"m-{i}" for i in range(5)]
        # not acknowledged: the next connection gets them again
        again = FakeConnection()
        async with a.presence.attach("u1", again):
            assert [mid for _, _, mid in again.got] == [f"m-{i}" for i in range(5)]
            await a.presence.acked(scoped("", "u1"), [f"m-{i}" for i in range(5)])
        # acknowledged: deleted
        last = FakeConnection()
        async with a.presence.attach("u1", last):
            assert last.got == []


async def test_expired_mail_is_not_handed_over() -> None:
    async with TestCluster(runners=1) as tc:
        sender = tc.client_member
        assert await sender.send_to_user("u1", "old", store=True, ttl=0.001) == "stored"
        await asyncio.sleep(0.01)
        conn = FakeConnection()
        async with tc.runners[0].presence.attach("u1", conn):
            assert conn.got == []


async def test_a_message_for_a_user_on_a_killed_pod_is_stored_for_the_next_connection(
) -> None:
    async with TestCluster(runners=2) as tc:
        a, b = tc.runners
        conn = FakeConnection()
        await a.presence.add("u1", conn)
        await tc.kill(0)  # its route stays until it expires; calls to it fail now
        sender = tc.client_member
        assert await sender.send_to_user("u1", "while away", id="m-9", store=True) == "stored"
        moved = FakeConnection()
        async with b.presence.attach("u1", moved):
            assert moved.got == [("message", b'"while away"', "m-9")]
        assert conn.got == []


async def test_a_full_connection_leaves_the_rest_of_the_mailbox_stored() -> None:
    async with TestCluster(runners=1) as tc:
        sender = tc.client_member
        for i in range(3):
            await sender.send_to_user("u1", i, id=f"m-{i}", store=True)
        full = FakeConnection(accept=False)
        async with tc.runners[0].presence.attach("u1", full):
            pass
        conn = FakeConnection()
        async with tc.runners[0].presence.attach("u1", conn):
            assert [mid for _, _, mid in conn.got] == ["m-0", "m-1", "m-2"]


@pytest.mark.parametrize("user", ["", "x" * 201, "tab\there", 42])
async def test_a_bad_user_id_is_refused(user: Any) -> None:
    async with TestCluster(runners=1) as tc:
        with pytest.raises(RealtimeError) as caught:
            await tc.client_member.send_to_user(user, "hi", store=True)
        assert caught.value.reason is Reason.INVALID_ARGUMENT
        assert caught.value.details["field"] == "user"


async def test_a_client_only_member_cannot_hold_connections() -> None:
    async with TestCluster(runners=1) as tc:
        with pytest.raises(RealtimeError):
            await tc.client_member.presence.add("u1", FakeConnection())
