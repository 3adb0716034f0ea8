"""Stream items (``storage.streams``) behave the same on memory, SQLite and PostgreSQL.

Each stream numbers its items 1, 2, 3… in one epoch; a retried append returns the
stored item and burns no position; a reader that keeps ``after = last`` sees every
item once; retention trims by count and by age but keeps the newest item while
the head stays, and an idle stream restarts at position 1 in a new epoch.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from covey.storage import StreamEntry, StreamHead, StreamItem, StreamStore

_ids = itertools.count(7_000_001)
EPOCHS = range(1, 2**53)


def entry(stream: str = "orders", **fields: Any) -> StreamEntry:
    return StreamEntry(stream=stream, id=fields.pop("id", None) or next(_ids),
                       payload=fields.pop("payload", b"item"), **fields)


def positions(items: list[StreamItem]) -> list[int]:
    return [item.position for item in items]


@pytest.fixture
def streams(storage: Any) -> StreamStore:
    store = storage.streams
    assert isinstance(store, StreamStore)
    return store


async def test_append_numbers_each_stream_from_one_in_argument_order(
        streams: StreamStore) -> None:
    batch = [entry("a", headers={"x-tenant": "t1"}, published_at=10.5), entry("b"),
             entry("a", payload=b"\x00\xff"), entry("a")]
    items = await streams.append(batch, now=20.0)
    assert [(i.stream, i.position, i.id) for i in items] == [
        ("a", 1, batch[0].id), ("b", 1, batch[1].id), ("a", 2, batch[2].id),
        ("a", 3, batch[3].id)]
    assert items[0].headers == {"x-tenant": "t1"} and items[0].published_at == 10.5
    assert items[2].payload == b"\x00\xff"
    a, b = items[0].epoch, items[1].epoch
    assert a in EPOCHS and b in EPOCHS and {i.epoch for i in items if i.stream == "a"} == {a}
    head, stored = await streams.read("a", 0)
    assert head == StreamHead("a", a, 3, 1, 20.0)
    assert stored == [items[0], items[2], items[3]]
    more = await streams.append([entry("a")], now=30.0)
    assert positions(more) == [4] and more[0].epoch == a
    head, _ = await streams.read("a", 0)
    assert head is not None and (head.last, head.updated_at) == (4, 30.0)


async def test_a_retried_append_returns_the_stored_item_and_burns_no_position(
        streams: StreamStore) -> None:
    first = entry(payload=b"first")
    [stored] = await streams.append([first], now=1.0)
    again = await streams.append(
        [StreamEntry(first.stream, first.id, b"second"), entry(), first], now=2.0)
    assert again[0] == stored and again[2] == stored
    assert again[1].position == 2  # the retried id took no position
    head, items = await streams.read(first.stream, 0)
    assert head is not None and head.last == 2 and head.updated_at == 2.0
    assert [i.payload for i in items] == [b"first", b"item"]
    # a batch of retries only moves nothing at all
    assert await streams.append([first], now=9.0) == [stored]
    head, _ = await streams.read(first.stream, 0)
    assert head is not None and (head.last, head.updated_at) == (2, 2.0)


async def test_an_id_repeated_in_one_batch_gets_one_position(streams: StreamStore) -> None:
    one = entry(payload=b"one")
    items = await streams.append([one, StreamEntry(one.stream, one.id, b"two"), entry()],
                                 now=1.0)
    assert positions(items) == [1, 1, 2] and items[1].payload == b"one"
    # the same id in another stream is another item
    other = await streams.append([StreamEntry("elsewhere", one.id, b"x")], now=1.0)
    assert positions(other) == [1]


async def test_read_after_a_position_with_a_limit(streams: StreamStore) -> None:
    items = await streams.append([entry() for _ in range(5)], now=1.0)
    head, after_two = await streams.read("orders", 2)
    assert after_two == items[2:]
    assert (await streams.read("orders", 0, limit=2))[1] == items[:2]
    assert (await streams.read("orders", 1, limit=2))[1] == items[1:3]
    end_head, nothing = await streams.read("orders", 5)
    assert nothing == [] and end_head == head
    assert await streams.read("orders", 99) == (head, [])
    assert await streams.read("no-such-stream", 0) == (None, [])


async def test_a_reader_that_keeps_after_last_sees_every_item_once(
        streams: StreamStore) -> None:
    seen: list[int] = []
    last = 0
    for round_ in range(6):
        await streams.append([entry() for _ in range(round_)], now=float(round_))
        _, items = await streams.read("orders", last, limit=2)
        while items:
            seen.extend(positions(items))
            last = items[-1].position
            _, items = await streams.read("orders", last, limit=2)
    assert seen == list(range(1, 16))


async def test_heads_of_the_streams_that_exist(streams: StreamStore) -> None:
    assert await streams.heads([]) == {}
    assert await streams.heads(["x"]) == {}
    a = await streams.append([entry("a"), entry("a")], now=3.0)
    b = await streams.append([entry("b")], now=4.0)
    many = [f"missing-{i}" for i in range(600)]  # more keys than one SQL IN list takes
    heads = await streams.heads(["a", "b", "c", *many])
    assert heads == {"a": StreamHead("a", a[0].epoch, 2, 1, 3.0),
                     "b": StreamHead("b", b[0].epoch, 1, 1, 4.0)}
    assert await streams.heads({"b"}) == {"b": heads["b"]}


async def test_stream_stats_count_streams_and_items(streams: StreamStore) -> None:
    assert await streams.stream_stats() == (0, 0)
    await streams.append([entry("a"), entry("a"), entry("b")], now=1.0)
    assert await streams.stream_stats() == (2, 3)


# ---- retention ----------------------------------------------------------------------


async def test_trim_keeps_the_last_items_of_each_stream(streams: StreamStore) -> None:
    await streams.append([entry("a", published_at=50.0) for _ in range(5)], now=100.0)
    await streams.append([entry("b", published_at=50.0) for _ in range(2)], now=100.0)
    # nothing is old: only what is beyond the last 2 of each stream goes
    assert await streams.trim(keep=2, before=10.0) == 3
    head, items = await streams.read("a", 0)
    assert positions(items) == [4, 5]
    assert head is not None and (head.first, head.last) == (4, 5)
    assert positions((await streams.read("b", 0))[1]) == [1, 2]
    assert await streams.trim(keep=2, before=10.0) == 0
    # keep=0 still keeps the newest item while the head stays
    assert await streams.trim(keep=0, before=10.0) == 2
    assert positions((await streams.read("a", 0))[1]) == [5]
    assert positions((await streams.read("b", 0))[1]) == [2]


async def test_trim_deletes_old_items_but_the_newest(streams: StreamStore) -> None:
    await streams.append([entry(published_at=t) for t in (10.0, 20.0, 30.0, 40.0)],
                         now=100.0)
    await streams.append([entry("quiet", published_at=5.0)], now=100.0)
    # published before 35: the first three; the head was updated at 100: it stays
    assert await streams.trim(keep=1000, before=35.0) == 3
    head, items = await streams.read("orders", 0)
    assert positions(items) == [4] and head is not None and head.first == 4
    # every item is old now, but the newest of each stream stays with its head
    assert await streams.trim(keep=1000, before=99.0) == 0
    assert await streams.stream_stats() == (2, 2)


async def test_an_idle_stream_is_dropped_and_restarts_in_a_new_epoch(
        streams: StreamStore) -> None:
    old = await streams.append([entry("idle") for _ in range(3)], now=10.0)
    await streams.append([entry("busy")], now=50.0)
    # heads updated before 20: the head goes with its items (3 items + 1 head)
    assert await streams.trim(keep=1000, before=20.0) == 4
    assert await streams.read("idle", 0) == (None, [])
    assert set(await streams.heads(["idle", "busy"])) == {"busy"}
    # its next append starts a new epoch at position 1
    [fresh] = await streams.append([entry("idle")], now=60.0)
    assert fresh.position == 1 and fresh.epoch in EPOCHS and fresh.epoch != old[0].epoch
    head, items = await streams.read("idle", 0)
    assert head == StreamHead("idle", fresh.epoch, 1, 1, 60.0) and items == [fresh]


async def test_trim_deletes_at_most_limit_rows_per_call(streams: StreamStore) -> None:
    await streams.append([entry("idle") for _ in range(4)], now=10.0)
    await streams.append([entry("busy", published_at=50.0) for _ in range(6)], now=50.0)
    # to go: 4 items and the head of "idle", and "busy" beyond its last 2 (4 items)
    calls: list[int] = []
    while not calls or calls[-1] == 3:
        calls.append(await streams.trim(keep=2, before=20.0, limit=3))
    assert calls == [3, 3, 3, 0]
    assert await streams.stream_stats() == (1, 2)
    assert positions((await streams.read("busy", 0))[1]) == [5, 6]
    # the idle head went last, after its items: its next append is position 1
    assert positions(await streams.append([entry("idle")], now=60.0)) == [1]


async def test_a_stream_trimmed_down_to_its_newest_item_keeps_numbering(
        streams: StreamStore) -> None:
    first = await streams.append([entry() for _ in range(3)], now=10.0)
    assert await streams.trim(keep=0, before=0.0) == 2
    [next_] = await streams.append([entry()], now=11.0)
    assert (next_.epoch, next_.position) == (first[0].epoch, 4)


async def test_an_append_without_waiting_for_the_flush_is_visible_at_once(
        streams: StreamStore) -> None:
    # sync=False: PostgreSQL commits without waiting for the WAL flush; the others
    # ignore it. Either way the items are stored, numbered and readable at once.
    one = await streams.append([StreamEntry("s", 1, b"a")], now=1.0, sync=False)
    two = await streams.append([StreamEntry("s", 2, b"b"), StreamEntry("s", 3, b"c")],
                               now=2.0, sync=False)
    again = await streams.append([StreamEntry("s", 1, b"a")], now=3.0, sync=False)
    assert [i.position for i in one + two] == [1, 2, 3]
    assert again == one
    head, items = await streams.read("s", 0)
    assert head is not None and head.last == 3
    assert [i.payload for i in items] == [b"a", b"b", b"c"]
