"""Routes and mailboxes (``storage.streams``) behave the same on every backend.

Routes say which runner holds a subscriber of a stream or a user's connection;
they expire unless their runner renews them, and go at once when it leaves.
Mail waits for an offline user, in the order it was stored, until it is
delivered (deleted) or expires; storing an id again keeps the first copy.
"""

from __future__ import annotations

from typing import Any

import pytest

from covey.storage import Mail, Route, StreamStore


@pytest.fixture
def streams(storage: Any) -> StreamStore:
    store = storage.streams
    assert isinstance(store, StreamStore)
    return store


def route(key: str, conn: str, runner: str = "10.0.0.1:7001", *, kind: str = "user",
          expires_at: float = 100.0, tenant: str = "") -> Route:
    return Route(kind, key, conn, runner, expires_at, tenant)


def mail(mail_id: str, key: str = "t1/u1", *, payload: bytes = b"hello",
         expires_at: float = 100.0, **fields: Any) -> Mail:
    return Mail(key, mail_id, payload, fields.pop("stored_at", 1.0), expires_at, **fields)


# ---- routes -------------------------------------------------------------------------


async def test_routes_by_key_then_conn_of_one_kind_unexpired(streams: StreamStore) -> None:
    await streams.put_routes([
        route("u2", "c9"), route("u1", "c2", tenant="acme"), route("u1", "c1"),
        route("u1", "gone", expires_at=10.0), route("u3", "c1"),
        route("u1", "10.0.0.2:7002", "10.0.0.2:7002", kind="stream")])
    found = await streams.routes("user", ["u1", "u2", "nobody"], now=10.0)
    assert [(r.key, r.conn) for r in found] == [("u1", "c1"), ("u1", "c2"), ("u2", "c9")]
    assert found[1] == route("u1", "c2", tenant="acme")
    assert await streams.routes("stream", ["u1"], now=10.0) == [
        route("u1", "10.0.0.2:7002", "10.0.0.2:7002", kind="stream")]
    assert await streams.routes("user", [], now=0.0) == []
    # bytewise order, whatever the database's locale
    await streams.put_routes([route("k", "B"), route("k", "a"), route("k", "é"),
                              route("k", "_")])
    assert [r.conn for r in await streams.routes("user", ["k"], now=0.0)] == [
        "B", "_", "a", "é"]


async def test_put_routes_replaces_by_kind_key_and_conn(streams: StreamStore) -> None:
    await streams.put_routes([route("u1", "c1", "r1", expires_at=50.0)])
    # a batch that names one route twice: the last one wins
    await streams.put_routes([route("u1", "c1", "r2", tenant="t", expires_at=60.0),
                              route("u1", "c1", "r3", expires_at=70.0)])
    assert await streams.routes("user", ["u1"], now=0.0) == [
        route("u1", "c1", "r3", expires_at=70.0)]
    await streams.put_routes([])


async def test_a_runner_renews_and_deletes_its_routes(streams: StreamStore) -> None:
    await streams.put_routes([route("u1", "c1", "r1", expires_at=10.0),
                              route("s", "r1", "r1", kind="stream", expires_at=10.0),
                              route("u2", "c2", "r2", expires_at=10.0)])
    assert await streams.renew_routes("r1", 500.0) == 2
    assert await streams.renew_routes("nobody", 500.0) == 0
    assert await streams.route_counts(now=20.0) == {("r1", "user"): 1, ("r1", "stream"): 1}
    assert await streams.delete_runner_routes("r1") == 2
    assert await streams.delete_runner_routes("r1") == 0
    assert await streams.routes("stream", ["s"], now=0.0) == []
    assert await streams.route_counts(now=0.0) == {("r2", "user"): 1}


async def test_delete_routes_by_key_and_conn(streams: StreamStore) -> None:
    await streams.put_routes([route("u1", "c1"), route("u1", "c2"), route("u2", "c1"),
                              route("u1", "c1", kind="stream")])
    assert await streams.delete_routes("user", [("u1", "c1"), ("u2", "c1"),
                                                ("u2", "c1"), ("u9", "c9")]) == 2
    assert await streams.delete_routes("user", []) == 0
    assert [(r.kind, r.key, r.conn) for r in
            await streams.routes("user", ["u1", "u2"], now=0.0)] == [("user", "u1", "c2")]
    assert len(await streams.routes("stream", ["u1"], now=0.0)) == 1


async def test_purge_routes_deletes_expired_ones_up_to_limit(streams: StreamStore) -> None:
    await streams.put_routes([route(f"u{i}", "c", expires_at=float(i)) for i in range(1, 6)])
    assert await streams.purge_routes(now=4.0, limit=3) == 3
    assert await streams.purge_routes(now=4.0) == 1  # expires_at == now is expired
    assert await streams.purge_routes(now=4.0) == 0
    assert [r.key for r in await streams.routes("user", ["u4", "u5"], now=0.0)] == ["u5"]


# ---- mailboxes ----------------------------------------------------------------------


async def test_mail_in_the_order_it_was_stored(streams: StreamStore) -> None:
    assert await streams.put_mail([mail("b", headers={"x-request-id": "r1"}), mail("a")]) == [
        True, True]
    assert await streams.put_mail([mail("0"), mail("other", "t1/u2")]) == [True, True]
    box = await streams.mail("t1/u1", now=0.0)
    assert [m.id for m in box] == ["b", "a", "0"]
    assert box[0] == mail("b", headers={"x-request-id": "r1"})
    assert [m.id for m in await streams.mail("t1/u1", now=0.0, limit=2)] == ["b", "a"]
    assert await streams.mail("nobody", now=0.0) == []


async def test_storing_an_id_again_keeps_the_first_copy(streams: StreamStore) -> None:
    assert await streams.put_mail([mail("m1", payload=b"first")]) == [True]
    flags = await streams.put_mail([mail("m2"), mail("m1", payload=b"second"),
                                    mail("m2", payload=b"again"), mail("m3")])
    assert flags == [True, False, False, True]
    assert [(m.id, m.payload) for m in await streams.mail("t1/u1", now=0.0)] == [
        ("m1", b"first"), ("m2", b"hello"), ("m3", b"hello")]
    assert await streams.put_mail([]) == []


async def test_delivered_mail_is_deleted_and_expired_mail_is_not_read(
        streams: StreamStore) -> None:
    await streams.put_mail([mail("m1", expires_at=50.0), mail("m2"), mail("m3")])
    assert [m.id for m in await streams.mail("t1/u1", now=50.0)] == ["m2", "m3"]
    assert await streams.delete_mail("t1/u1", ["m2", "m9"]) == 1
    assert await streams.delete_mail("t1/u1", []) == 0
    assert await streams.delete_mail("t1/u2", ["m3"]) == 0  # another user's box
    assert [m.id for m in await streams.mail("t1/u1", now=0.0)] == ["m1", "m3"]
    # a deleted id stored again is new mail, behind what was stored before it
    assert await streams.put_mail([mail("m2")]) == [True]
    assert [m.id for m in await streams.mail("t1/u1", now=0.0)] == ["m1", "m3", "m2"]


async def test_purge_mail_deletes_expired_mail_up_to_limit(streams: StreamStore) -> None:
    await streams.put_mail([mail(f"m{i}", f"t1/u{i % 2}", expires_at=float(i))
                            for i in range(1, 7)])
    assert await streams.purge_mail(now=4.0, limit=3) == 3
    assert await streams.purge_mail(now=4.0) == 1
    assert await streams.purge_mail(now=4.0) == 0
    left = [m.id for key in ("t1/u0", "t1/u1") for m in await streams.mail(key, now=0.0)]
    assert sorted(left) == ["m5", "m6"]
