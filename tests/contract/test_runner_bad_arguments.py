"""Bad arguments to RunnerStorage are refused before they touch anything (issue 8).

Every method, on every backend, with each malformed value: a non-retryable
``invalid_argument`` naming the field, and nothing changed — the live set still
reads back exactly as before (no row added, removed, rewritten or heartbeaten),
runner A still holds its shards with the same epochs, and the shard nobody held
is still free. One stored malformed registration would make every later
``live_runners()`` fail, and with it membership on every runner.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from covey.core import ClusterError, Reason, RunnerAddress, ShardId, TestClock
from covey.storage import RunnerInfo, RunnerStorage, Storage

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, S3
from .conftest import MakeStorage

Call = Callable[[RunnerStorage], Awaitable[object]]

#: addresses no runner can have; RUNNER_A's text is among them, since a backend
#: that keys rows by ``str(address)`` would take it for runner A
BAD_ADDRESSES: list[tuple[str, str, Any]] = [
    ("address", "str of runner A", str(RUNNER_A)),
    ("address", "int", 5),
    ("address", "None", None),
    ("address.host", "NUL", RunnerAddress("10.0.0.1\x00", 7001)),
    ("address.port", "-1", RunnerAddress("h", -1)),
]
#: more, for ``register``: the one method that stores an address
BAD_REGISTERED_ADDRESSES: list[tuple[str, str, Any]] = [
    *BAD_ADDRESSES,
    ("address.host", "empty", RunnerAddress("", 7001)),
    ("address.host", "lone surrogate", RunnerAddress("h\ud800", 7001)),
    ("address.host", "256 bytes", RunnerAddress("h" * 256, 7001)),
    ("address.host", "int", RunnerAddress(5, 7001)),  # type: ignore[arg-type]
    ("address.port", "65536", RunnerAddress("h", 65536)),
    ("address.port", "2**40", RunnerAddress("h", 2**40)),
    ("address.port", "True", RunnerAddress("h", True)),
    ("address.port", "str", RunnerAddress("h", "7001")),  # type: ignore[arg-type]
    ("address.port", "1.5", RunnerAddress("h", 1.5)),  # type: ignore[arg-type]
]
BAD_GROUPS: list[tuple[str, Any]] = [
    ("a string", "default"), ("bytes", b"default"), ("None", None), ("a set", {"default"}),
    ("[5]", [5]), ("['']", [""]), ("NUL", ["a\x00"]), ("lone surrogate", ["\udc80"]),
    ("256 bytes", ["g" * 256]), ("65 groups", [f"g{i}" for i in range(65)]),
]
BAD_WEIGHTS: list[tuple[str, Any]] = [
    ("-1", -1), ("0", 0), ("1001", 1001), ("2**31", 2**31), ("2**63", 2**63), ("nan", math.nan),
    ("1.5", 1.5), ("str", "1"), ("True", True), ("None", None),
]
#: a client-only registration (port 0) serves nothing: weight 0, no groups
CLIENT = RunnerAddress("client.host.42", 0)
BAD_CLIENT_REGISTRATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("weight", "weight 1", {"groups": (), "weight": 1}),
    ("groups", "groups", {"groups": ("default",), "weight": 0}),
    ("groups", "the defaults", {}),
]
BAD_SHARDS: list[tuple[str, Any]] = [
    ("a string", "default:1"), ("int", 5), ("None", None), ("[str]", ["default:1"]),
    ("[int]", [1]), ("[None]", [None]), ("[ShardId(0)]", [ShardId("default", 0)]),
    ("[ShardId(-1)]", [ShardId("default", -1)]),
    ("[ShardId(2**31)]", [ShardId("default", 2**31)]),
    ("[ShardId(2**40)]", [ShardId("default", 2**40)]),
    ("[ShardId(True)]", [ShardId("default", True)]),
    ("[ShardId(1.5)]", [ShardId("default", 1.5)]),  # type: ignore[arg-type]
    ("group ''", [ShardId("", 1)]), ("group NUL", [ShardId("a\x00b", 1)]),
    ("group surrogate", [ShardId("\ud800", 1)]), ("group int", [ShardId(5, 1)]),  # type: ignore[arg-type]
    ("a good one and a bad one", [S3, ShardId("default", 2**40)]),
]
BAD_AGES: list[tuple[str, Any]] = [
    ("nan", math.nan), ("-inf", -math.inf), ("-1", -1), ("-0.5", -0.5), ("10**400", 10**400),
    ("str", "60"), ("None", None), ("True", True),
]


#: the RunnerStorage methods that have cases here (test_argument_checks.py checks
#: that every method of the contract is among them)
COVERED: set[str] = set()


def _cases() -> list[Any]:
    cases: list[Any] = []

    def case(method: str, field: str, label: str, call: Call) -> None:
        COVERED.add(method)
        cases.append(pytest.param(field, call, id=f"{method}-{field}-{label}"))

    for field, label, address in BAD_ADDRESSES:
        case("heartbeat", field, label, lambda r, a=address: r.heartbeat(a))
        case("unregister", field, label, lambda r, a=address: r.unregister(a))
        case("expire", field, label, lambda r, a=address: r.expire(a))
        case("release_all", field, label, lambda r, a=address: r.release_all(a))
        case("acquire", field, label, lambda r, a=address: r.acquire(a, [S3]))
        case("refresh", field, label, lambda r, a=address: r.refresh(a, [S1]))
        case("release", field, label, lambda r, a=address: r.release(a, [S1]))
    case("acquire", "address.port", "client-only", lambda r: r.acquire(CLIENT, [S3]))
    for field, label, address in BAD_REGISTERED_ADDRESSES:
        case("register", field, label, lambda r, a=address: r.register(a))
    for label, groups in BAD_GROUPS:  # on runner A itself: its row must not be rewritten
        case("register", "groups", label, lambda r, g=groups: r.register(RUNNER_A, groups=g))
    for label, weight in BAD_WEIGHTS:
        case("register", "weight", label, lambda r, w=weight: r.register(RUNNER_A, weight=w))
    for field, label, kwargs in BAD_CLIENT_REGISTRATIONS:
        case("register", field, f"client-only with {label}",
             lambda r, k=kwargs: r.register(CLIENT, **k))
    for label, shards in BAD_SHARDS:
        case("acquire", "shards", label, lambda r, s=shards: r.acquire(RUNNER_A, s))
        case("refresh", "shards", label, lambda r, s=shards: r.refresh(RUNNER_A, s))
        case("release", "shards", label, lambda r, s=shards: r.release(RUNNER_A, s))
    for label, age in BAD_AGES:
        case("live_runners", "max_age", label, lambda r, v=age: r.live_runners(v))
    return cases


async def _snapshot(storage: Storage, other: Storage) -> tuple[list[RunnerInfo], object]:
    """What a bad call must not change: the live set, A's shards and epochs, S3 free."""
    live = await storage.runners.live_runners(max_age=3600)
    held = await storage.runners.refresh(RUNNER_A, [S1, S2, S3])
    epochs = await storage.runners.acquire(RUNNER_A, [S1, S2])  # held: same epochs
    taken = await other.runners.acquire(RUNNER_B, [S1, S2, S3])
    await other.runners.release(RUNNER_B, list(taken))
    return live, (held, epochs, set(taken))


@pytest.mark.parametrize(("field", "call"), _cases())
async def test_a_bad_argument_is_refused_and_changes_nothing(
    make_storage: MakeStorage, clock: TestClock, field: str, call: Call
) -> None:
    storage, other = await make_storage(), await make_storage()
    await storage.runners.register(RUNNER_A, groups=["default", "jobs"], weight=2)
    held = await storage.runners.acquire(RUNNER_A, [S1, S2])
    assert set(held) == {S1, S2}
    await clock.advance(1)  # a stray heartbeat of runner A would show in last_heartbeat
    before = await _snapshot(storage, other)
    assert before[0][0].address == RUNNER_A and before[1] == ({S1, S2}, held, {S3})

    with pytest.raises(ClusterError) as info:
        await call(storage.runners)

    error = info.value
    assert error.reason is Reason.INVALID_ARGUMENT, repr(error)
    assert not error.retryable
    assert error.details.get("field") == field, repr(error)
    assert await _snapshot(storage, other) == before
    assert await storage.runners.heartbeat(RUNNER_A)  # and it keeps serving


async def test_the_limits_themselves_are_accepted(storage: Storage, clock: TestClock) -> None:
    host = "h" * 255
    await storage.runners.register(RunnerAddress(host, 65535), groups=["g" * 255] * 64,
                                   weight=1000)
    await storage.runners.register(RunnerAddress("a", 1), groups=[], weight=1)
    machine_id = await storage.runners.register(CLIENT, groups=(), weight=0)
    assert 0 <= machine_id <= 1023
    assert await storage.runners.heartbeat(CLIENT)
    live = {r.address: r for r in await storage.runners.live_runners(max_age=0)}
    assert set(live) == {RunnerAddress(host, 65535), RunnerAddress("a", 1), CLIENT}
    assert live[CLIENT].weight == 0 and live[CLIENT].groups == ()
    assert live[RunnerAddress(host, 65535)].weight == 1000
    await clock.advance(10**6)
    assert await storage.runners.live_runners(max_age=60) == []
    assert await storage.runners.live_runners(max_age=math.inf) == sorted(
        live.values(), key=lambda r: r.address)  # inf: every registered runner, however old
    shard = ShardId("g" * 255, 2**31 - 1)
    assert set(await storage.runners.acquire(RunnerAddress("a", 1), [shard])) == {shard}
    assert await storage.runners.refresh(RunnerAddress("a", 1), [shard]) == {shard}
    await storage.runners.release(RunnerAddress("a", 1), [shard])
    await storage.runners.release_all(CLIENT)
    await storage.runners.expire(CLIENT)
    await storage.runners.unregister(CLIENT)
    left = await storage.runners.live_runners(max_age=math.inf)
    assert [r.address for r in left] == sorted([RunnerAddress(host, 65535), RunnerAddress("a", 1)])
