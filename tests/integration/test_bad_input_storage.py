"""Bad input at the storage contracts, called directly (issue 8).

Every method of ``MessageStorage``, ``RunnerStorage`` and ``StateStore`` with
wrong types, NaN, negative and out-of-range numbers, NUL and lone surrogates, on
memory, SQLite and PostgreSQL: ``invalid_argument`` (not retryable), nothing
stored, and the storage still serves a good write afterwards.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from covey.core import CoveyConfig, EntityAddress, RunnerAddress, ShardId, StorageOptions
from covey.storage import Fence, Message, Reply, Storage, open_storage
from tests.conftest import drop_schema

from ._bad_input import BACKENDS, CALLER_MISTAKE, Ledger, stored_messages

S1 = ShardId("default", 1)
ADDRESS = RunnerAddress("10.9.9.9", 7001)
_ids = itertools.count(7_000_001)

#: numbers no count, limit, age or version may be
NUMBERS: list[tuple[str, Any]] = [
    ("nan", math.nan), ("inf", math.inf), ("-1", -1), ("2**63", 2**63), ("2**64", 2**64),
    ("str", "10"), ("None", None), ("1.5", 1.5), ("True", True),
]
#: values no time (Unix seconds) may be
TIMES: list[tuple[str, Any]] = [
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("-1", -1), ("str", "10"),
    ("None", None), ("True", True),
]
#: id collections no message id can be in
ID_LISTS: list[tuple[str, Any]] = [
    ("['x']", ["x"]), ("[2**64]", [2**64]), ("[2**63]", [2**63]), ("[-1]", [-1]),
    ("[0]", [0]), ("[1.5]", [1.5]), ("[None]", [None]), ("'123'", "123"), ("5", 5),
]
SHARD_LISTS: list[tuple[str, Any]] = [
    ("['default:1']", ["default:1"]), ("[1]", [1]), ("5", 5), ("[None]", [None]),
    ("[ShardId(-1)]", [ShardId("default", -1)]), ("[ShardId(0)]", [ShardId("default", 0)]),
    ("[ShardId(2**40)]", [ShardId("default", 2**40)]), ("[ShardId('\\x00')]",
                                                        [ShardId("a\x00b", 1)]),
]


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = str(request.param)
    schema = f"bad_{uuid.uuid4().hex[:12]}"
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'bad.db'}"}.get(backend)
    if url is None:
        url = str(request.getfixturevalue("pg_database"))
    config = CoveyConfig(database_url=url, shards=16, storage=StorageOptions(schema=schema))
    store = open_storage(config)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
        if backend == "postgres":
            await drop_schema(url, schema)


def msg(entity_id: str = "e1", **fields: Any) -> Message:
    address = fields.pop("address", None) or EntityAddress("Account", entity_id, S1)
    return Message(id=fields.pop("id", None) or next(_ids), address=address,
                   tag=fields.pop("tag", "deposit"), payload=fields.pop("payload", b"\x80"),
                   **fields)


def probe(storage: Storage) -> tuple[Ledger, Callable[[], Awaitable[int]],
                                     Callable[[], Awaitable[object]]]:
    async def serving() -> None:  # a good save still works
        result = await storage.messages.save_request(msg("good"))
        assert type(result).__name__ == "Saved"

    return Ledger(storage.backend), lambda: stored_messages(storage), serving


async def test_message_storage(storage: Storage) -> None:
    ledger, stored, serving = probe(storage)
    m = storage.messages
    taken = await m.unprocessed([S1], limit=10)  # the good messages are leased: no noise
    assert taken == []
    bad_messages: list[tuple[str, Callable[[], Message]]] = [
        *[(f"id {label}", lambda v=v: msg(id=v))
          for label, v in [("-1", -1), ("2**63", 2**63), ("str", "1"), ("1.5", 1.5),
                           ("True", True)]],
        ("entity_id NUL", lambda: msg("a\x00b")),
        ("entity_id lone surrogate", lambda: msg("a\ud800b")),
        ("entity_id 100 KB", lambda: msg("x" * 102_400)),
        ("entity_id int", lambda: msg(address=EntityAddress("Account", 5, S1))),  # type: ignore[arg-type]
        ("entity_type ''", lambda: msg(address=EntityAddress("", "e", S1))),
        ("entity_type NUL", lambda: msg(address=EntityAddress("A\x00", "e", S1))),
        ("shard 0", lambda: msg(address=EntityAddress("Account", "e", ShardId("default", 0)))),
        ("shard 2**40", lambda: msg(address=EntityAddress("Account", "e",
                                                          ShardId("default", 2**40)))),
        ("tag ''", lambda: msg(tag="")),
        ("tag NUL", lambda: msg(tag="de\x00posit")),
        ("tag 100 KB", lambda: msg(tag="t" * 102_400)),
        ("payload str", lambda: msg(payload="text")),
        ("headers int value", lambda: msg(headers={"k": 1})),
        ("headers NUL key", lambda: msg(headers={"k\x00": "v"})),
        ("headers surrogate value", lambda: msg(headers={"k": "\ud800"})),
        ("headers 1 MB value", lambda: msg(headers={"k": "v" * 1_048_576})),
        ("primary_key int", lambda: msg(primary_key=5)),
        ("primary_key NUL", lambda: msg(primary_key="k\x00")),
        ("primary_key lone surrogate", lambda: msg(primary_key="k\udfff")),
        *[(f"deliver_at {label}", lambda v=v: msg(deliver_at=v))
          for label, v in [("nan", math.nan), ("inf", math.inf), ("-1", -1.0), ("str", "soon")]],
        *[(f"priority {label}", lambda v=v: msg(priority=v))
          for label, v in [("40000", 40_000), ("1.5", 1.5), ("str", "high"), ("nan", math.nan)]],
    ]
    for label, build in bad_messages:
        await ledger.refused(f"save_request({label})", lambda b=build: m.save_request(b()),
                             reasons=CALLER_MISTAKE, stored=stored, serving=serving)
        await ledger.refused(f"save_requests([good, {label}])",
                             lambda b=build: m.save_requests([msg("fine"), b()]),
                             reasons=CALLER_MISTAKE, stored=stored, serving=None)
    await ledger.refused("save_request('not a message')", lambda: m.save_request("x"),  # type: ignore[arg-type]
                         reasons=CALLER_MISTAKE, stored=stored, serving=None)
    fence = Fence(S1, 1)
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = []
    for label, ids in ID_LISTS:
        calls += [
            (f"mark_started({label})", lambda ids=ids: m.mark_started(ids)),
            (f"inspect({label})", lambda ids=ids: m.inspect(ids)),
            (f"delete({label})", lambda ids=ids: m.delete(ids)),
            (f"replies_for({label})", lambda ids=ids: m.replies_for(ids)),
        ]
    for label, value in [("2**64", 2**64), ("-1", -1), ("0", 0), ("str", "1"), ("None", None)]:
        calls += [
            (f"get({label})", lambda v=value: m.get(v)),
            (f"reset_request({label})", lambda v=value: m.reset_request(v)),
            (f"save_reply(Reply({label}))", lambda v=value: m.save_reply(Reply(v, b""), fence)),
            (f"reschedule({label})", lambda v=value: m.reschedule(
                v, deliver_at=1.0, error="e", fence=fence)),
        ]
        if value is not None:  # no before_id is fine
            calls.append((f"list_messages(before_id={label})",
                          lambda v=value: m.list_messages("Account", before_id=v)))
    for label, value in NUMBERS:
        calls += [
            (f"unprocessed(limit={label})", lambda v=value: m.unprocessed([S1], limit=v)),
            (f"list_messages(limit={label})", lambda v=value: m.list_messages("Account", limit=v)),
            (f"save_reply(fence epoch {label})", lambda v=value: m.save_reply(
                Reply(next(_ids), b""), Fence(S1, v))),
        ]
    for label, value in TIMES:
        calls += [
            (f"purge({label})", lambda v=value: m.purge(v)),
            (f"reschedule(deliver_at={label})", lambda v=value: m.reschedule(
                next(_ids), deliver_at=v, error="e", fence=fence)),
        ]
    for label, shards in SHARD_LISTS:
        calls += [
            (f"unprocessed({label})", lambda s=shards: m.unprocessed(s, limit=10)),
            (f"next_due({label})", lambda s=shards: m.next_due(s)),
            (f"reset_shards({label})", lambda s=shards: m.reset_shards(s)),
        ]
    calls += [
        ("save_reply(payload str)", lambda: m.save_reply(Reply(next(_ids), "x"), fence)),  # type: ignore[arg-type]
        ("save_reply(fence None)", lambda: m.save_reply(Reply(next(_ids), b""), None)),  # type: ignore[arg-type]
        ("reschedule(error int)", lambda: m.reschedule(next(_ids), deliver_at=1.0, error=5,  # type: ignore[arg-type]
                                                       fence=fence)),
        ("reschedule(error NUL)", lambda: m.reschedule(next(_ids), deliver_at=1.0,
                                                       error="e\x00", fence=fence)),
        ("list_messages(5)", lambda: m.list_messages(5)),  # type: ignore[arg-type]
        ("list_messages(state='bogus')", lambda: m.list_messages("Account", state="bogus")),  # type: ignore[arg-type]
        ("list_messages(tag=5)", lambda: m.list_messages("Account", tag=5)),  # type: ignore[arg-type]
        ("list_messages(tag NUL)", lambda: m.list_messages("Account", tag="a\x00")),
        ("list_messages(entity_type NUL)", lambda: m.list_messages("A\x00")),
        ("count_messages(5)", lambda: m.count_messages(5)),  # type: ignore[arg-type]
        ("count_messages(None)", lambda: m.count_messages(None)),  # type: ignore[arg-type]
        ("count_messages(NUL)", lambda: m.count_messages("A\x00")),
        ("clear_address('x')", lambda: m.clear_address("x")),  # type: ignore[arg-type]
        ("clear_address(NUL id)", lambda: m.clear_address(EntityAddress("Account", "\x00", S1))),
    ]
    for label, call in calls:
        await ledger.refused(label, call, reasons=CALLER_MISTAKE, stored=stored,
                             serving=serving)
    ledger.check()


async def test_runner_storage(storage: Storage) -> None:
    r = storage.runners
    ledger = Ledger(storage.backend)

    async def live() -> int:
        return len(await r.live_runners(max_age=3600))

    async def serving() -> None:
        await r.register(ADDRESS)
        assert await r.heartbeat(ADDRESS)

    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("heartbeat(5)", lambda: r.heartbeat(5)),  # type: ignore[arg-type]
        *[(f"live_runners({label})", lambda v=v: r.live_runners(v))
          for label, v in [("nan", math.nan), ("-1", -1), ("str", "10"), ("None", None)]],
        ("unregister(5)", lambda: r.unregister(5)),  # type: ignore[arg-type]
        ("expire(5)", lambda: r.expire(5)),  # type: ignore[arg-type]
        ("release_all(5)", lambda: r.release_all(5)),  # type: ignore[arg-type]
    ]
    for label, shards in SHARD_LISTS:
        calls += [
            (f"acquire({label})", lambda s=shards: r.acquire(ADDRESS, s)),
            (f"refresh({label})", lambda s=shards: r.refresh(ADDRESS, s)),
            (f"release({label})", lambda s=shards: r.release(ADDRESS, s)),
        ]
    # last: a wrongly stored registration may make every later read fail
    calls += [
        ("register('x')", lambda: r.register("x")),  # type: ignore[arg-type]
        ("register(host NUL)", lambda: r.register(RunnerAddress("h\x00", 1))),
        ("register(port -1)", lambda: r.register(RunnerAddress("h", -1))),
        ("register(port 2**20)", lambda: r.register(RunnerAddress("h", 2**20))),
        ("register(groups='default')", lambda: r.register(RunnerAddress("h", 2),
                                                          groups="default")),
        ("register(groups=[5])", lambda: r.register(RunnerAddress("h", 3), groups=[5])),  # type: ignore[list-item]
        ("register(groups=['a\\x00'])", lambda: r.register(RunnerAddress("h", 4),
                                                           groups=["a\x00"])),
        *[(f"register(weight={label})", lambda v=v: r.register(RunnerAddress("h", 5), weight=v))
          for label, v in [("-1", -1), ("0", 0), ("nan", math.nan), ("str", "1"),
                           ("2**63", 2**63)]],
    ]
    await serving()
    for label, call in calls:
        await ledger.refused(label, call, reasons=CALLER_MISTAKE, stored=live, serving=serving)
    ledger.check()


async def test_state_store(storage: Storage) -> None:
    s = storage.state
    ledger = Ledger(storage.backend)

    async def keys() -> int:  # the hostile keys below stay unwritten
        return sum([await s.get(k) is not None for k in ("k", "k2")])

    async def serving() -> None:
        current = await s.get("good")
        await s.set("good", b"v", expected_version=None if current is None else current.version)

    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("get(5)", lambda: s.get(5)),  # type: ignore[arg-type]
        ("get('')", lambda: s.get("")),
        ("get(NUL)", lambda: s.get("a\x00")),
        ("get(lone surrogate)", lambda: s.get("a\ud800")),
        ("get(100 KB)", lambda: s.get("k" * 102_400)),
        ("set(NUL key)", lambda: s.set("a\x00", b"v", expected_version=None)),
        ("set(surrogate key)", lambda: s.set("a\udfff", b"v", expected_version=None)),
        ("set(100 KB key)", lambda: s.set("k" * 102_400, b"v", expected_version=None)),
        ("set(value str)", lambda: s.set("k", "v", expected_version=None)),  # type: ignore[arg-type]
        *[(f"set(expected_version={label})", lambda v=v: s.set("k2", b"v", expected_version=v))
          for label, v in [("str", "1"), ("nan", math.nan), ("2**64", 2**64), ("-1", -1),
                           ("1.5", 1.5)]],
        ("set(fence 'x')", lambda: s.set("k", b"v", expected_version=None, fence="x")),  # type: ignore[arg-type]
        ("set(fence epoch nan)", lambda: s.set("k", b"v", expected_version=None,
                                               fence=Fence(S1, math.nan))),  # type: ignore[arg-type]
        ("delete(5)", lambda: s.delete(5)),  # type: ignore[arg-type]
        ("delete(NUL)", lambda: s.delete("a\x00")),
        ("delete(expected_version='x')", lambda: s.delete("k", expected_version="x")),  # type: ignore[arg-type]
        ("delete(expected_version=2**64)", lambda: s.delete("k", expected_version=2**64)),
    ]
    for label, call in calls:
        await ledger.refused(label, call, reasons=CALLER_MISTAKE, stored=keys, serving=serving)
    ledger.check()
