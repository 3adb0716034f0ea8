"""Every backend refuses a malformed stream-store call the same way, storing nothing.

The refusal is ``invalid_argument`` with ``details["field"]`` naming the
argument, raised before anything is written: a batch with one bad entry, route
or mail stores none of the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from covey.core import ClusterError, Reason
from covey.storage import MAX_STREAM_KEY_BYTES, Mail, Route, StreamEntry, StreamStore

NAN = float("nan")
GOOD = StreamEntry("orders", 1, b"p")
ROUTE = Route("user", "u1", "c1", "r1", 100.0)
MAIL = Mail("u1", "m1", b"p", 1.0, 100.0)
TOO_LONG = "x" * (MAX_STREAM_KEY_BYTES + 1)
#: 302 UTF-8 bytes in 151 characters: the limit counts bytes
WIDE = "é" * 151

Call = Callable[[StreamStore], Awaitable[Any]]


def entry(**fields: Any) -> list[StreamEntry]:
    """A batch of a good entry and one with ``fields`` changed."""
    values = {"stream": "orders", "id": 2, "payload": b"p", **fields}
    return [GOOD, StreamEntry(**values)]


def _route(**fields: Any) -> list[Route]:
    values = {"kind": "user", "key": "u2", "conn": "c2", "runner": "r1", "expires_at": 9.0,
              **fields}
    return [ROUTE, Route(**values)]


def _mail(**fields: Any) -> list[Mail]:
    values = {"key": "u1", "id": "m2", "payload": b"p", "stored_at": 1.0, "expires_at": 9.0,
              **fields}
    return [MAIL, Mail(**values)]


CASES: list[tuple[str, Call]] = [
    # ---- append
    ("entries", lambda s: s.append("not a batch", now=1.0)),  # type: ignore[arg-type]
    ("entry", lambda s: s.append([GOOD, object()], now=1.0)),  # type: ignore[list-item]
    ("entry.stream", lambda s: s.append(entry(stream=""), now=1.0)),
    ("entry.stream", lambda s: s.append(entry(stream="a\x00b"), now=1.0)),
    ("entry.stream", lambda s: s.append(entry(stream=TOO_LONG), now=1.0)),
    ("entry.stream", lambda s: s.append(entry(stream=WIDE), now=1.0)),
    ("entry.stream", lambda s: s.append(entry(stream="\ud800"), now=1.0)),
    ("entry.stream", lambda s: s.append(entry(stream=b"orders"), now=1.0)),
    ("entry.id", lambda s: s.append(entry(id=0), now=1.0)),
    ("entry.id", lambda s: s.append(entry(id=2**63), now=1.0)),
    ("entry.id", lambda s: s.append(entry(id=True), now=1.0)),
    ("entry.id", lambda s: s.append(entry(id="2"), now=1.0)),
    ("entry.payload", lambda s: s.append(entry(payload="text"), now=1.0)),
    ("entry.headers", lambda s: s.append(entry(headers={f"h{i}": "v" for i in range(65)}),
                                         now=1.0)),
    ("entry.headers", lambda s: s.append(entry(headers={"h": 1}), now=1.0)),
    ("entry.headers", lambda s: s.append(entry(headers=[("h", "v")]), now=1.0)),
    ("entry.published_at", lambda s: s.append(entry(published_at=NAN), now=1.0)),
    ("entry.published_at", lambda s: s.append(entry(published_at=-1.0), now=1.0)),
    ("now", lambda s: s.append([GOOD], now=float("inf"))),
    # ---- read, heads, trim
    ("stream", lambda s: s.read("", 0)),
    ("after", lambda s: s.read("orders", -1)),
    ("limit", lambda s: s.read("orders", 0, limit=0)),
    ("limit", lambda s: s.read("orders", 0, limit=True)),
    ("streams", lambda s: s.heads("orders")),
    ("streams", lambda s: s.heads(["orders", TOO_LONG])),
    ("keep", lambda s: s.trim(keep=-1, before=1.0)),
    ("before", lambda s: s.trim(keep=1, before=NAN)),
    ("limit", lambda s: s.trim(keep=1, before=1.0, limit=0)),
    # ---- routes
    ("routes", lambda s: s.put_routes("routes")),  # type: ignore[arg-type]
    ("route", lambda s: s.put_routes([ROUTE, object()])),  # type: ignore[list-item]
    ("route.kind", lambda s: s.put_routes(_route(kind="topic"))),
    ("route.key", lambda s: s.put_routes(_route(key=""))),
    ("route.conn", lambda s: s.put_routes(_route(conn=TOO_LONG))),
    ("route.runner", lambda s: s.put_routes(_route(runner="a\x00"))),
    ("route.tenant", lambda s: s.put_routes(_route(tenant=None))),
    ("route.expires_at", lambda s: s.put_routes(_route(expires_at=NAN))),
    ("runner", lambda s: s.renew_routes("", 1.0)),
    ("expires_at", lambda s: s.renew_routes("r1", -5.0)),
    ("kind", lambda s: s.delete_routes("users", [("u1", "c1")])),
    ("pairs", lambda s: s.delete_routes("user", "u1")),  # type: ignore[arg-type]
    ("pairs", lambda s: s.delete_routes("user", [("u1",)])),  # type: ignore[list-item]
    ("pairs", lambda s: s.delete_routes("user", [("u1", "")])),
    ("runner", lambda s: s.delete_runner_routes(TOO_LONG)),
    ("kind", lambda s: s.routes("", ["u1"], now=1.0)),
    ("keys", lambda s: s.routes("user", "u1", now=1.0)),
    ("now", lambda s: s.routes("user", ["u1"], now=NAN)),
    ("now", lambda s: s.route_counts(now=-1.0)),
    ("limit", lambda s: s.purge_routes(now=1.0, limit=0)),
    ("now", lambda s: s.purge_routes(now=NAN)),
    # ---- mailboxes
    ("mails", lambda s: s.put_mail(MAIL)),  # type: ignore[arg-type]
    ("mail.key", lambda s: s.put_mail(_mail(key=""))),
    ("mail.id", lambda s: s.put_mail(_mail(id=7))),
    ("mail.payload", lambda s: s.put_mail(_mail(payload=bytearray(b"p")))),
    ("mail.headers", lambda s: s.put_mail(_mail(headers={"": "v"}))),
    ("mail.stored_at", lambda s: s.put_mail(_mail(stored_at=NAN))),
    ("mail.expires_at", lambda s: s.put_mail(_mail(expires_at="soon"))),
    ("key", lambda s: s.mail("", now=1.0)),
    ("now", lambda s: s.mail("u1", now=NAN)),
    ("limit", lambda s: s.mail("u1", now=1.0, limit=-1)),
    ("key", lambda s: s.delete_mail(WIDE, ["m1"])),
    ("ids", lambda s: s.delete_mail("u1", "m1")),
    ("ids", lambda s: s.delete_mail("u1", ["m1", ""])),
    ("limit", lambda s: s.purge_mail(now=1.0, limit=0)),
    ("now", lambda s: s.purge_mail(now=-1.0)),
]


async def test_bad_arguments_are_refused_and_nothing_is_stored(storage: Any) -> None:
    streams: StreamStore = storage.streams
    for expected, call in CASES:
        with pytest.raises(ClusterError) as info:
            await call(streams)
        error = info.value
        assert error.reason is Reason.INVALID_ARGUMENT and not error.retryable, expected
        assert error.details["field"] == expected, (expected, error.details)
    assert await streams.stream_stats() == (0, 0)
    assert await streams.route_counts(now=0.0) == {}
    assert await streams.mail("u1", now=0.0) == []


async def test_a_key_at_the_limit_is_stored(storage: Any) -> None:
    streams: StreamStore = storage.streams
    longest = "é" * (MAX_STREAM_KEY_BYTES // 2)
    [item] = await streams.append([StreamEntry(longest, 2**63 - 1, b"")], now=0.0)
    assert (item.stream, item.id, item.position) == (longest, 2**63 - 1, 1)
    await streams.put_routes([Route("stream", longest, longest, longest, 1.0, longest)])
    assert len(await streams.routes("stream", [longest], now=0.0)) == 1
    assert await streams.put_mail([Mail(longest, longest, b"", 0.0, 1.0)]) == [True]
