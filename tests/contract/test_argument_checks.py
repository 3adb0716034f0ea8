"""Every method refuses every bad argument the same way on every backend.

For each method of ``MessageStorage``, ``StateStore`` and (on PostgreSQL)
``TransactionalMessages``, a table of bad arguments: wrong types, ints out of
range, bools where ints go, NaN and infinite times, empty or oversize text,
unknown enum strings, bad fences and shard ids. Each must raise a
``ClusterError`` with reason ``invalid_argument`` and ``details["field"]``
naming the argument — nothing else (no bare ``TypeError``, no driver error) —
and change nothing. ``RunnerStorage`` has its table in
``test_runner_bad_arguments.py``, ``MessageStorage.unit`` and ``UnitOfWork`` theirs
in ``test_unit_bad_arguments.py``. A method of a contract without cases fails
:func:`test_every_method_of_every_contract_has_bad_argument_cases`, so a new
method cannot be added without them.
"""

from __future__ import annotations

import inspect
import math
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest

from covey.core import ClusterError, EntityAddress, Reason, ShardId
from covey.storage import (
    EventRecord,
    EventStore,
    Fence,
    Message,
    MessageStorage,
    Reply,
    RunnerStorage,
    StateStore,
    Storage,
    TransactionalEvents,
    TransactionalMessages,
    UnitOfWork,
)
from covey.storage._checked import (
    CheckedMessageStorage,
    CheckedRunnerStorage,
    CheckedStateStore,
    CheckedTransactionalMessages,
)
from covey.storage._events_checked import CheckedEventStore, CheckedTransactionalEvents
from covey.storage._unit import CheckedUnitOfWork

from . import test_runner_bad_arguments
from ._helpers import RUNNER_A, S1, S2, msg, next_id
from .conftest import Namespace


@dataclass
class Ctx:
    """What the calls work on: a stored message of S1 and runner A's fence for S1."""

    storage: Storage
    message: Message
    fence: Fence


Call = Callable[[Ctx], Awaitable[object]]
Case = tuple[str, str, Call]  # field, label, call

GOOD = msg().address
BIG = "x" * 256  # one byte over MAX_NAME_BYTES
NOISE = secrets.token_hex(60_000)  # 120 KB that does not compress (index rows!)

IDS: list[tuple[str, Any]] = [
    ("0", 0), ("-1", -1), ("2**63", 2**63), ("None", None), ("str", "1"), ("1.5", 1.5),
    ("True", True),
]
ID_COLLECTIONS: list[tuple[str, Any]] = [
    ("int", 5), ("str", "12"), ("bytes", b"12"), ("None", None), ("[0]", [0]),
    ("[True]", [True]), ("[None]", [None]), ("[[1]]", [[1]]), ("[2**63]", [2**63]),
    ("['1']", ["1"]),
]
SHARD_LISTS: list[tuple[str, Any]] = [
    ("int", 5), ("str", "default:1"), ("None", None), ("[1]", [1]), ("[None]", [None]),
    ("shard 0", [ShardId("default", 0)]), ("beyond int4", [ShardId("default", 2**31)]),
    ("shard True", [ShardId("default", True)]), ("shard 1.5", [ShardId("default", 1.5)]),  # type: ignore[arg-type]
    ("group ''", [ShardId("", 1)]), ("group NUL", [ShardId("d\x00", 1)]),
    ("group int", [ShardId(5, 1)]),  # type: ignore[arg-type]
    ("a good one and a bad one", [S1, ShardId("default", 0)]),
]
LIMITS: list[tuple[str, Any]] = [
    ("-1", -1), ("True", True), ("2.5", 2.5), ("None", None), ("str", "5"), ("2**63", 2**63),
]
TIMES: list[tuple[str, Any]] = [
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("-1", -1.0),
    ("10**400", 10**400), ("str", "soon"), ("None", None), ("True", True),
]
#: (field, label, fence): a fence no shard can have
FENCES: list[tuple[str, str, Any]] = [
    ("fence", "None", None), ("fence", "tuple", (S1, 1)),
    ("fence", "shard 0", Fence(ShardId("default", 0), 1)),
    ("fence", "shard as text", Fence("default:1", 1)),  # type: ignore[arg-type]
    ("fence", "group NUL", Fence(ShardId("d\x00", 1), 1)),
    ("fence.epoch", "-1", Fence(S1, -1)), ("fence.epoch", "2**63", Fence(S1, 2**63)),
    ("fence.epoch", "nan", Fence(S1, math.nan)),  # type: ignore[arg-type]
    ("fence.epoch", "True", Fence(S1, True)), ("fence.epoch", "None", Fence(S1, None)),  # type: ignore[arg-type]
]
NAMES: list[tuple[str, Any]] = [
    ("None", None), ("int", 5), ("NUL", "A\x00"), ("surrogate", "\ud800"), ("256 bytes", BIG),
]
TEXTS: list[tuple[str, Any]] = [
    ("None", None), ("int", 5), ("NUL", "e\x00"), ("surrogate", "\ud800"),
]
STATE_KEYS: list[tuple[str, Any]] = [
    ("None", None), ("int", 5), ("bytes", b"k"), ("empty", ""), ("NUL", "k\x00"),
    ("surrogate", "\ud800"), ("2049 bytes", "k" * 2049),
]
VERSIONS: list[tuple[str, Any]] = [
    ("0", 0), ("-1", -1), ("2**63", 2**63), ("str", "1"), ("1.0", 1.0), ("True", True),
]
def _addr(**change: Any) -> EntityAddress:
    return replace(GOOD, **change)


#: (field, label, change to a good message): text outside its limits (NUL, lone
#: surrogates, too long), too many headers, times that are not finite or negative
MESSAGE_LIMITS: list[tuple[str, str, dict[str, Any]]] = [
    ("address.entity_id", "empty", {"address": _addr(entity_id="")}),
    ("address.entity_id", "NUL", {"address": _addr(entity_id="acct\x00")}),
    ("address.entity_id", "lone surrogate", {"address": _addr(entity_id="\ud800")}),
    ("address.entity_id", "1025 bytes", {"address": _addr(entity_id="e" * 1025)}),
    ("address.entity_id", "120 KB", {"address": _addr(entity_id=NOISE)}),
    ("address.entity_type", "NUL", {"address": _addr(entity_type="Acc\x00")}),
    ("address.entity_type", "256 bytes", {"address": _addr(entity_type="T" * 256)}),
    ("address.shard", "NUL in its group", {"address": _addr(shard=ShardId("d\x00", 1))}),
    ("address.shard", "beyond int4", {"address": _addr(shard=ShardId("default", 2**31))}),
    ("tag", "NUL", {"tag": "dep\x00osit"}),
    ("tag", "256 bytes", {"tag": "t" * 256}),
    ("primary_key", "empty", {"primary_key": ""}),
    ("primary_key", "NUL", {"primary_key": "k\x00"}),
    ("primary_key", "lone surrogate", {"primary_key": "\udc80"}),
    ("primary_key", "4097 bytes", {"primary_key": "k" * 4097}),
    ("headers", "NUL in a value", {"headers": {"x-tenant": "a\x00"}}),
    ("headers", "NUL in a name", {"headers": {"x\x00": "a"}}),
    ("headers", "lone surrogate", {"headers": {"x-user": "\ud83d"}}),
    ("headers", "value over 8 KiB", {"headers": {"x-big": "v" * 8193}}),
    ("headers", "65 headers", {"headers": {f"h{i}": "v" for i in range(65)}}),
    ("deliver_at", "NaN", {"deliver_at": math.nan}),
    ("deliver_at", "inf", {"deliver_at": math.inf}),
    ("deliver_at", "-inf", {"deliver_at": -math.inf}),
    ("deliver_at", "negative", {"deliver_at": -1.0}),
    ("deliver_at", "beyond a float", {"deliver_at": 10**400}),
]
#: (field, label, change to a good message): every limit, and wrong types
MESSAGES: list[tuple[str, str, dict[str, Any]]] = [*MESSAGE_LIMITS,
    ("id", "0", {"id": 0}), ("id", "True", {"id": True}), ("id", "2**63", {"id": 2**63}),
    ("id", "str", {"id": "1"}), ("address", "str", {"address": "Account/e1"}),
    ("address.entity_type", "empty", {"address": replace(GOOD, entity_type="")}),
    ("address.shard", "shard 0", {"address": replace(GOOD, shard=ShardId("default", 0))}),
    ("tag", "None", {"tag": None}), ("tag", "256 bytes", {"tag": BIG}),
    ("payload", "str", {"payload": "p"}), ("payload", "None", {"payload": None}),
    ("headers", "list", {"headers": [("a", "b")]}), ("headers", "int value", {"headers": {"a": 1}}),
    ("primary_key", "int", {"primary_key": 5}), ("deliver_at", "str", {"deliver_at": "now"}),
    ("priority", "32768", {"priority": 32768}), ("priority", "True", {"priority": True}),
    ("priority", "None", {"priority": None}),
]
ADDRESSES: list[tuple[str, str, Any]] = [
    ("address", "str", "Account/e1"), ("address", "None", None),
    ("address.entity_id", "NUL", replace(GOOD, entity_id="e\x00")),
    ("address.entity_type", "empty", replace(GOOD, entity_type="")),
    ("address.shard", "shard 0", replace(GOOD, shard=ShardId("d", 0))),
    ("address.shard", "not a shard", EntityAddress("Account", "e1", "default:1")),  # type: ignore[arg-type]
]


def _message_cases() -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = {}

    def case(method: str, field: str, label: str, call: Call) -> None:
        cases.setdefault(method, []).append((field, label, call))

    def bad_message(change: dict[str, Any]) -> Message:
        return replace(msg(), **change)

    for label, value in [("None", None), ("str", "msg"), ("a Reply", Reply(1, b""))]:
        case("save_request", "message", label,
             lambda c, v=value: c.storage.messages.save_request(v))
        case("save_requests", "message", f"[{label}]",
             lambda c, v=value: c.storage.messages.save_requests([msg(), v]))
    for field, label, change in MESSAGES:
        bad = bad_message(change)
        case("save_request", field, label,
             lambda c, m=bad: c.storage.messages.save_request(m))
        case("save_requests", field, label,
             lambda c, m=bad: c.storage.messages.save_requests([msg(), m]))
    for label, value in [("None", None), ("str", "ab"), ("a dict", {1: msg()}), ("int", 5)]:
        case("save_requests", "messages", label,
             lambda c, v=value: c.storage.messages.save_requests(v))

    for label, value in [("None", None), ("tuple", (1, b"r")), ("str", "r")]:
        case("save_reply", "reply", label,
             lambda c, v=value: c.storage.messages.save_reply(v, c.fence))
    for label, value in IDS:
        case("save_reply", "request_id", label,
             lambda c, v=value: c.storage.messages.save_reply(Reply(v, b"r"), c.fence))
    for field, label, reply in [("reply.payload", "str", Reply(1, "r")),  # type: ignore[arg-type]
                                ("reply.payload", "None", Reply(1, None)),  # type: ignore[arg-type]
                                ("reply.is_error", "str", Reply(1, b"r", "yes")),  # type: ignore[arg-type]
                                ("reply.is_error", "int", Reply(1, b"r", 1))]:  # type: ignore[arg-type]
        case("save_reply", field, label, lambda c, r=reply: c.storage.messages.save_reply(
            replace(r, request_id=c.message.id), c.fence))
    for field, label, fence in FENCES:
        case("save_reply", field, label, lambda c, f=fence: c.storage.messages.save_reply(
            Reply(c.message.id, b"r"), f))
        case("reschedule", field, label, lambda c, f=fence: c.storage.messages.reschedule(
            c.message.id, deliver_at=0, error="e", fence=f))
    for label, value in IDS:
        case("reschedule", "request_id", label, lambda c, v=value: c.storage.messages.reschedule(
            v, deliver_at=0, error="e", fence=c.fence))
    for label, value in TIMES:
        case("reschedule", "deliver_at", label, lambda c, v=value: c.storage.messages.reschedule(
            c.message.id, deliver_at=v, error="e", fence=c.fence))
    for label, value in TEXTS:
        case("reschedule", "error", label, lambda c, v=value: c.storage.messages.reschedule(
            c.message.id, deliver_at=0, error=v, fence=c.fence))

    for label, value in SHARD_LISTS:
        case("unprocessed", "shards", label,
             lambda c, v=value: c.storage.messages.unprocessed(v, limit=5))
        case("next_due", "shards", label, lambda c, v=value: c.storage.messages.next_due(v))
        case("reset_shards", "shards", label, lambda c, v=value: c.storage.messages.reset_shards(v))
    for label, value in LIMITS:
        case("unprocessed", "limit", label,
             lambda c, v=value: c.storage.messages.unprocessed([S1], limit=v))
        case("list_messages", "limit", label,
             lambda c, v=value: c.storage.messages.list_messages("Account", limit=v))

    for method in ("mark_started", "inspect", "delete", "replies_for"):
        for label, value in ID_COLLECTIONS:
            case(method, "request_id", label,
                 lambda c, v=value, m=method: getattr(c.storage.messages, m)(v))
    for method in ("get", "reset_request"):
        for label, value in IDS:
            case(method, "request_id", label,
                 lambda c, v=value, m=method: getattr(c.storage.messages, m)(v))

    for label, value in NAMES:
        case("list_messages", "entity_type", label,
             lambda c, v=value: c.storage.messages.list_messages(v))
        if value is not None:  # None: any tag
            case("list_messages", "tag", label,
                 lambda c, v=value: c.storage.messages.list_messages("Account", tag=v))
        case("count_messages", "entity_type", label,
             lambda c, v=value: c.storage.messages.count_messages(v))
    for label, value in NAMES:
        case("find", "tag", label,
             lambda c, v=value: c.storage.messages.find(c.message.address, v, "k"))
    for label, value in [("None", None), ("empty", ""), ("int", 5), ("NUL", "a\x00b")]:
        case("find", "primary_key", label,
             lambda c, v=value: c.storage.messages.find(c.message.address, "t", v))
    for label, value in [("bogus", "bogus"), ("upper case", "ERROR"), ("int", 1),
                         ("list", ["error"]), ("True", True)]:
        case("list_messages", "state", label,
             lambda c, v=value: c.storage.messages.list_messages("Account", state=v))
    for label, value in IDS:
        if value is not None:  # None: no paging
            case("list_messages", "before_id", label,
                 lambda c, v=value: c.storage.messages.list_messages("Account", before_id=v))
    for label, value in [("int", 1), ("None", None), ("str", "yes")]:
        case("count_messages", "with_processed", label,
             lambda c, v=value: c.storage.messages.count_messages("Account", with_processed=v))

    for field, label, address in ADDRESSES:
        case("clear_address", field, label,
             lambda c, a=address: c.storage.messages.clear_address(a))
        case("unprocessed_of", field, label,
             lambda c, a=address: c.storage.messages.unprocessed_of(a, limit=5))
    for label, value in LIMITS:
        case("unprocessed_of", "limit", label,
             lambda c, v=value: c.storage.messages.unprocessed_of(GOOD, limit=v))

    for label, value in TIMES:
        case("purge", "before", label, lambda c, v=value: c.storage.messages.purge(v))
    for label, value in [*LIMITS, ("0", 0)]:
        case("purge", "limit", label, lambda c, v=value: c.storage.messages.purge(1.0, limit=v))
    for label, value in [("str", "Job"), ("int", 5), ("None", None), ("[5]", [5]),
                         ("[None]", [None]), ("NUL", ["A\x00"]), ("256 bytes", [BIG])]:
        case("purge", "keep_errors_of", label,
             lambda c, v=value: c.storage.messages.purge(1.0, keep_errors_of=v))
    return cases


def _state_cases() -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = {}

    def case(method: str, field: str, label: str, call: Call) -> None:
        cases.setdefault(method, []).append((field, label, call))

    for label, key in STATE_KEYS:
        case("get", "key", label, lambda c, k=key: c.storage.state.get(k))
        case("set", "key", label,
             lambda c, k=key: c.storage.state.set(k, b"v", expected_version=None))
        case("delete", "key", label, lambda c, k=key: c.storage.state.delete(k))
    for label, value in [("str", "v"), ("None", None), ("bytearray", bytearray(b"v")),
                         ("int", 1)]:
        case("set", "value", label,
             lambda c, v=value: c.storage.state.set("k", v, expected_version=1))
    for label, version in VERSIONS:
        case("set", "expected_version", label,
             lambda c, v=version: c.storage.state.set("k", b"w", expected_version=v))
        case("delete", "expected_version", label,
             lambda c, v=version: c.storage.state.delete("k", expected_version=v))
    for field, label, fence in FENCES[1:]:  # None: an unfenced write
        case("set", field, label,
             lambda c, f=fence: c.storage.state.set("k", b"w", expected_version=1, fence=f))
    return cases


def event(**change: Any) -> EventRecord:
    """A good event, with ``change`` applied."""
    good = EventRecord(id=next_id(), topic="orders", type="Placed", version=1, key="k1",
                       payload=b"p", published_at=1.0, groups=("billing",))
    return replace(good, **change)


#: topic and group names that are not ``[A-Za-z0-9._-]+`` of <= 200 bytes
EVENT_NAMES: list[tuple[str, Any]] = [
    ("int", 5), ("empty", ""), ("NUL", "a\x00"), ("space", "a b"), ("slash", "a/b"),
    ("non-ASCII", "caf\u00e9"), ("201 bytes", "t" * 201), ("list", ["orders"]),
]
POSITIONS: list[tuple[str, Any]] = [
    ("-1", -1), ("None", None), ("str", "1"), ("1.5", 1.5), ("True", True), ("2**63", 2**63),
]
#: (field, label, change to a good event)
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("event.id", "0", {"id": 0}), ("event.id", "True", {"id": True}),
    ("event.id", "2**63", {"id": 2**63}), ("event.id", "str", {"id": "1"}),
    *(("event.topic", label, {"topic": value}) for label, value in [*EVENT_NAMES,
                                                                    ("None", None)]),
    ("event.type", "None", {"type": None}), ("event.type", "empty", {"type": ""}),
    ("event.type", "201 bytes", {"type": "T" * 201}), ("event.type", "NUL", {"type": "T\x00"}),
    ("event.version", "0", {"version": 0}), ("event.version", "True", {"version": True}),
    ("event.version", "str", {"version": "1"}), ("event.version", "2**63", {"version": 2**63}),
    ("event.key", "empty", {"key": ""}), ("event.key", "None", {"key": None}),
    ("event.key", "NUL", {"key": "k\x00"}), ("event.key", "1025 bytes", {"key": "k" * 1025}),
    ("event.key", "lone surrogate", {"key": "\ud800"}),
    ("event.payload", "str", {"payload": "p"}), ("event.payload", "None", {"payload": None}),
    ("event.headers", "list", {"headers": [("a", "b")]}),
    ("event.headers", "NUL in a value", {"headers": {"x": "a\x00"}}),
    ("event.headers", "65 headers", {"headers": {f"h{i}": "v" for i in range(65)}}),
    ("event.published_at", "nan", {"published_at": math.nan}),
    ("event.published_at", "inf", {"published_at": math.inf}),
    ("event.published_at", "-1", {"published_at": -1.0}),
    ("event.published_at", "str", {"published_at": "now"}),
    ("event.groups", "str", {"groups": "billing"}), ("event.groups", "list", {"groups": ["a"]}),
    ("event.groups", "bad name", {"groups": ("a b",)}), ("event.groups", "int", {"groups": (5,)}),
]


def _event_cases() -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = {}

    def case(method: str, field: str, label: str, call: Call) -> None:
        cases.setdefault(method, []).append((field, label, call))

    def ev(c: Ctx) -> EventStore:
        return c.storage.events

    for label, value in [("None", None), ("str", "ab"), ("a dict", {1: event()}), ("int", 5)]:
        case("append", "events", label, lambda c, v=value: ev(c).append(v, [msg()]))
        case("append", "messages", label, lambda c, v=value: ev(c).append([event()], v))
    case("append", "event", "[None]", lambda c: ev(c).append([event(), None], []))  # type: ignore[list-item]
    case("append", "message", "[None]", lambda c: ev(c).append([event()], [msg(), None]))  # type: ignore[list-item]
    for field, label, change in EVENTS:
        case("append", field, label,
             lambda c, ch=change: ev(c).append([event(), event(**ch)], [msg()]))
    for field, label, change in MESSAGES:
        case("append", field, label,
             lambda c, ch=change: ev(c).append([event()], [msg(), replace(msg(), **ch)]))

    for label, value in LIMITS:
        case("sequence", "limit", label, lambda c, v=value: ev(c).sequence(limit=v))
        case("read", "limit", label, lambda c, v=value: ev(c).read(0, limit=v))
        case("unfanned", "limit", label,
             lambda c, v=value: ev(c).unfanned("billing", "orders", 0, limit=v))
        case("purge", "limit", label, lambda c, v=value: ev(c).purge(1.0, limit=v))
    case("purge", "limit", "0", lambda c: ev(c).purge(1.0, limit=0))
    for label, value in POSITIONS:
        case("read", "after", label, lambda c, v=value: ev(c).read(v))
        case("unfanned", "after", label, lambda c, v=value: ev(c).unfanned("billing", "orders", v))
        case("advance_group", "cursor", label,
             lambda c, v=value: ev(c).advance_group("billing", "orders", v))
        case("replay_group", "after", label,
             lambda c, v=value: ev(c).replay_group("billing", "orders", v))
    for label, value in [("str", "orders"), ("int", 5), ("[None]", [None]),
                         ("['a b']", ["a b"]), ("[201 bytes]", ["t" * 201])]:
        case("read", "topics", label, lambda c, v=value: ev(c).read(0, topics=v))
    for label, value in IDS:
        case("get", "event_id", label, lambda c, v=value: ev(c).get(v))
    for label, value in TIMES:
        case("position_at", "when", label, lambda c, v=value: ev(c).position_at(v))
        case("register_group", "now", label, lambda c, v=value: ev(c).register_group(
            "billing", "orders", start="earliest", now=v))
        case("purge", "before", label, lambda c, v=value: ev(c).purge(v))
    for label, value in [("bogus", "bogus"), ("upper case", "EARLIEST"), ("None", None),
                         ("int", 1)]:
        case("register_group", "start", label, lambda c, v=value: ev(c).register_group(
            "billing", "orders", start=v, now=1.0))
    for label, value in EVENT_NAMES:
        case("last_position", "topic", label, lambda c, v=value: ev(c).last_position(v))
        case("position_at", "topic", label, lambda c, v=value: ev(c).position_at(1.0, v))
        case("groups", "topic", label, lambda c, v=value: ev(c).groups(topic=v))
        case("groups", "group", label, lambda c, v=value: ev(c).groups(group=v))
        case("delete_group", "topic", label, lambda c, v=value: ev(c).delete_group("billing", v))
    for label, value in [*EVENT_NAMES, ("None", None)]:
        case("unfanned", "group", label, lambda c, v=value: ev(c).unfanned(v, "orders", 0))
        case("unfanned", "topic", label, lambda c, v=value: ev(c).unfanned("billing", v, 0))
        case("register_group", "group", label, lambda c, v=value: ev(c).register_group(
            v, "orders", start="earliest", now=1.0))
        case("register_group", "topic", label, lambda c, v=value: ev(c).register_group(
            "billing", v, start="earliest", now=1.0))
        case("delete_group", "group", label, lambda c, v=value: ev(c).delete_group(v))
        for method in ("advance_group", "replay_group"):
            case(method, "group", label,
                 lambda c, v=value, m=method: getattr(ev(c), m)(v, "orders", 1))
            case(method, "topic", label,
                 lambda c, v=value, m=method: getattr(ev(c), m)("billing", v, 1))
    return cases


MESSAGE_CASES = _message_cases()
STATE_CASES = _state_cases()
EVENT_CASES = _event_cases()
#: EventStore methods that take no argument
EVENT_NO_ARGUMENTS = frozenset({"delivery_stats", "topics"})


def _transactional_cases(conn: asyncpg.Connection) -> list[Case]:
    """``save_requests_in`` cases; ``conn`` is a connection in a transaction."""
    def save_in(connection: Any, messages: Any) -> Call:
        async def call(c: Ctx) -> object:
            store = c.storage.messages
            assert isinstance(store, TransactionalMessages)
            return await store.save_requests_in(connection, messages)
        return call

    return [
        ("connection", "None", save_in(None, [msg()])),
        ("connection", "str", save_in("postgresql://", [msg()])),
        ("connection", "int", save_in(5, [msg()])),
        ("messages", "None", save_in(conn, None)), ("messages", "str", save_in(conn, "ab")),
        ("message", "[None]", save_in(conn, [None])),
        *((field, label, save_in(conn, [msg(), replace(msg(), **change)]))
          for field, label, change in MESSAGES),
    ]


def _events_in_cases(conn: Any) -> list[Case]:
    """``append_in`` and ``groups_in`` cases; ``conn`` is the application's connection
    in a transaction."""
    def append_in(connection: Any, events: Any, messages: Any) -> Call:
        async def call(c: Ctx) -> object:
            store = c.storage.events
            assert isinstance(store, TransactionalEvents)
            return await store.append_in(connection, events, messages)
        return call

    def groups_in(connection: Any, topic: Any) -> Call:
        async def call(c: Ctx) -> object:
            store = c.storage.events
            assert isinstance(store, TransactionalEvents)
            return await store.groups_in(connection, topic)
        return call

    return [
        ("connection", "None", groups_in(None, "orders")),
        ("connection", "str", groups_in("postgresql://", "orders")),
        ("topic", "None", groups_in(conn, None)),
        ("topic", "int", groups_in(conn, 5)),
        ("topic", "space", groups_in(conn, "a b")),
        ("topic", "empty", groups_in(conn, "")),
        ("connection", "None", append_in(None, [event()], [msg()])),
        ("connection", "str", append_in("postgresql://", [event()], [msg()])),
        ("events", "None", append_in(conn, None, [msg()])),
        ("messages", "str", append_in(conn, [event()], "ab")),
        ("event", "[None]", append_in(conn, [None], [])),
        *((field, label, append_in(conn, [event(), event(**change)], [msg()]))
          for field, label, change in EVENTS),
        *((field, label, append_in(conn, [event()], [msg(), replace(msg(), **change)]))
          for field, label, change in MESSAGES[:8]),
    ]


def _contract_methods(contract: type) -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(contract, inspect.isfunction)
                  if not name.startswith("_"))


def test_every_method_of_every_contract_has_bad_argument_cases() -> None:
    from . import test_unit_bad_arguments  # it imports this module's tables

    covered = {
        MessageStorage: set(MESSAGE_CASES) | {"unit"},
        StateStore: set(STATE_CASES),
        RunnerStorage: test_runner_bad_arguments.COVERED,
        TransactionalMessages: {"save_requests_in"},
        UnitOfWork: test_unit_bad_arguments.COVERED,
        EventStore: set(EVENT_CASES) | EVENT_NO_ARGUMENTS,
        TransactionalEvents: {"append_in", "groups_in"},
    }
    for contract, methods in covered.items():
        missing = set(_contract_methods(contract)) - methods
        assert not missing, f"{contract.__name__} methods without bad-argument cases: {missing}"


@pytest.mark.parametrize(("contract", "checked"), [
    (MessageStorage, CheckedMessageStorage), (RunnerStorage, CheckedRunnerStorage),
    (StateStore, CheckedStateStore), (TransactionalMessages, CheckedTransactionalMessages),
    (UnitOfWork, CheckedUnitOfWork), (EventStore, CheckedEventStore),
    (TransactionalEvents, CheckedTransactionalEvents),
])
def test_every_method_goes_through_the_shared_checks(contract: type, checked: type) -> None:
    # the public methods are the checking ones; a backend only implements ``_`` methods
    for name in _contract_methods(contract):
        assert name in vars(checked), f"{checked.__name__} does not check {name}"
        assert getattr(getattr(checked, name), "__final__", False), name


async def test_every_backend_goes_through_the_shared_checks(storage: Storage,
                                                            backend: str) -> None:
    unit = storage.messages.unit(Fence(S1, 1), 1)
    for store, checked in [(storage.messages, CheckedMessageStorage),
                           (storage.runners, CheckedRunnerStorage),
                           (storage.state, CheckedStateStore),
                           (storage.events, CheckedEventStore),
                           (unit, CheckedUnitOfWork)]:
        assert isinstance(store, checked)
        for name in vars(checked):
            if not name.startswith("_"):
                assert getattr(type(store), name) is getattr(checked, name), name
    assert isinstance(storage.messages, TransactionalMessages) == (backend == "postgres")
    assert isinstance(storage.events, TransactionalEvents) == (backend != "memory")


@pytest.fixture
async def ctx(storage: Storage) -> Ctx:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    message = msg()
    await storage.messages.save_request(message)
    await storage.state.set("k", b"v", expected_version=None)
    await storage.events.register_group("billing", "orders", start="earliest", now=1.0)
    await storage.events.append([event()], [])
    await storage.events.sequence()
    return Ctx(storage, message, fence)


async def _snapshot(c: Ctx) -> tuple[object, ...]:
    """What no refused call may change."""
    return (await c.storage.messages.inspect([c.message.id]), await c.storage.state.get("k"),
            await c.storage.messages.count_messages("Account"),
            await c.storage.runners.refresh(RUNNER_A, [S1, S2]),
            await c.storage.events.read(0), await c.storage.events.groups(),
            await c.storage.events.topics())


async def _refusals(c: Ctx, cases: list[Case]) -> list[str]:
    """The problems of ``cases``: each must raise invalid_argument naming its field."""
    problems = []
    for field, label, call in cases:
        try:
            await call(c)
        except ClusterError as exc:
            if exc.reason is not Reason.INVALID_ARGUMENT or exc.details.get("field") != field:
                problems.append(f"{field}/{label}: {exc!r} details={exc.details}")
        except Exception as exc:  # exactly what must not happen
            problems.append(f"{field}/{label}: not a ClusterError: {exc!r}")
        else:
            problems.append(f"{field}/{label}: accepted")
    return problems


@pytest.mark.parametrize("method", sorted(MESSAGE_CASES))
async def test_message_storage_refuses_bad_arguments(ctx: Ctx, method: str) -> None:
    before = await _snapshot(ctx)
    assert await _refusals(ctx, MESSAGE_CASES[method]) == []
    assert await _snapshot(ctx) == before


@pytest.mark.parametrize("method", sorted(STATE_CASES))
async def test_state_store_refuses_bad_arguments(ctx: Ctx, method: str) -> None:
    before = await _snapshot(ctx)
    assert await _refusals(ctx, STATE_CASES[method]) == []
    assert await _snapshot(ctx) == before


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_transactional_messages_refuse_bad_arguments(
    ctx: Ctx, request: pytest.FixtureRequest
) -> None:
    conn = await asyncpg.connect(str(request.getfixturevalue("pg_database")))
    try:
        before = await _snapshot(ctx)
        async with conn.transaction():
            assert await _refusals(ctx, _transactional_cases(conn)) == []
        assert await _snapshot(ctx) == before
    finally:
        await conn.close()


@pytest.mark.parametrize("method", sorted(EVENT_CASES))
async def test_event_store_refuses_bad_arguments(ctx: Ctx, method: str) -> None:
    before = await _snapshot(ctx)
    assert await _refusals(ctx, EVENT_CASES[method]) == []
    assert await _snapshot(ctx) == before


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_transactional_events_refuse_bad_arguments(
    ctx: Ctx, backend: str, namespace: Namespace
) -> None:
    before = await _snapshot(ctx)
    if backend == "postgres":
        conn = await asyncpg.connect(namespace.url)
        try:
            async with conn.transaction():
                assert await _refusals(ctx, _events_in_cases(conn)) == []
        finally:
            await conn.close()
    else:
        lite = sqlite3.connect(namespace.path, timeout=10)
        try:
            assert await _refusals(ctx, _events_in_cases(lite)) == []
            lite.rollback()
        finally:
            lite.close()
    assert await _snapshot(ctx) == before
