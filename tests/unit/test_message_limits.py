"""Bad messages are refused before anything is sent or stored (issue 8).

On the in-memory cluster: entity ids and keys outside their limits, the one size
limit for every kind of message (volatile and persisted calls, jobs), persisted
calls to an unknown entity type or RPC (completed with a stored error, never
re-read), the typed client's argument mistakes, and delivery timers that must
never spin on a time that is not finite. Every refusal is a non-retryable
``ClusterError`` with a ``reason``; the cluster keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import covey
from covey.core import (
    ClusterError,
    CoveyConfig,
    EntityError,
    Reason,
    RunnerAddress,
    SerializationError,
    TestClock,
)
from covey.core.runtime import TaskSet
from covey.sharding import LocalNetwork, LocalTransport
from covey.sharding.runtime import DeliveryRegistry, Envelope, Messenger, Sharding
from covey.storage import Message, Storage
from covey.storage.memory import InMemoryStorage
from covey.testing import TestCluster

from ._entities import APPLIED, Account, Deposit

FRAME = CoveyConfig().transport.max_frame_bytes
TOO_BIG = "y" * (FRAME + 1024)  # a payload no frame can carry
PUT: list[int] = []  # sizes the Store handlers ran with


class Store(covey.Entity, type="LimitsStore"):
    @covey.rpc(persisted=True)
    async def put(self, text: str) -> int:
        PUT.append(len(text))
        return len(text)

    @covey.rpc
    async def echo(self, text: str) -> int:
        PUT.append(len(text))
        return len(text)


async def stored(storage: Storage, entity_type: str = "Account") -> int:
    """How many messages of ``entity_type`` are stored (in any state)."""
    return sum(n for *_, n in await storage.messages.count_messages(entity_type))


def refused(error: BaseException, reason: Reason) -> None:
    assert isinstance(error, ClusterError), repr(error)
    assert error.reason is reason, repr(error)
    assert not error.retryable


async def serves(tc: TestCluster) -> None:
    """A good volatile and a good persisted call right after: the cluster serves."""
    good = tc.client(Account, "good", timeout=5)
    before = await good.balance_of()
    assert await good.add_volatile(1) == before + 1
    assert await good.deposit(Deposit(txn_id=f"good-{before}", amount=1)) == before + 2


@pytest.fixture
async def tc() -> AsyncIterator[TestCluster]:
    async with TestCluster(Account, Store, runners=2) as cluster:
        yield cluster


# ---- entity ids, keys and headers ------------------------------------------

BAD_IDS: list[tuple[str, object]] = [
    ("empty", ""),
    ("NUL", "acct\x00-1"),
    ("lone surrogate", "acct-\ud800"),
    ("1025 bytes", "a" * 1025),
    ("513 two-byte characters", "é" * 513),
    ("100 KB", "x" * 100_000),
    ("int", 42),
    ("None", None),
]


@pytest.mark.parametrize(("label", "entity_id"), BAD_IDS, ids=[b[0] for b in BAD_IDS])
async def test_bad_entity_ids_are_refused_for_volatile_and_persisted_calls(
    tc: TestCluster, label: str, entity_id: Any
) -> None:
    APPLIED.clear()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: tc.client(Account, entity_id).add_volatile(1),
        lambda: tc.client(Account, entity_id).deposit(Deposit(txn_id="t", amount=1)),
        lambda: tc.client(Account, entity_id, discard=True).deposit(
            Deposit(txn_id="t2", amount=1)),
        lambda: tc.client_member.send_raw("Account", entity_id, "balance_of", b"",
                                          persisted=True),
    ]
    for call in calls:
        with pytest.raises(ClusterError) as info:
            await call()
        refused(info.value, Reason.INVALID_ARGUMENT)
        assert info.value.details["field"] == "entity_id"
    assert await stored(tc.storage) == 0
    assert APPLIED == []
    await serves(tc)


async def test_the_longest_entity_id_is_served(tc: TestCluster) -> None:
    longest = "é" * 512  # 1024 UTF-8 bytes
    assert len(longest.encode()) == covey.core.MAX_ENTITY_ID_BYTES
    assert await tc.client(Account, longest).deposit(Deposit(txn_id="t", amount=3)) == 3


@pytest.mark.parametrize(("label", "key"),
                         [("empty", ""), ("NUL", "txn\x00"), ("4097 bytes", "k" * 4097)])
async def test_bad_primary_keys_are_refused(tc: TestCluster, label: str, key: str) -> None:
    # (a lone surrogate cannot even be encoded in the payload: a payload error;
    # the storage contract tests refuse it as a primary key)
    APPLIED.clear()
    with pytest.raises(ClusterError) as info:
        await tc.client(Account, "pk").deposit(Deposit(txn_id=key, amount=1))
    refused(info.value, Reason.INVALID_ARGUMENT)
    assert info.value.details["field"] == "primary_key"
    assert await stored(tc.storage) == 0 and APPLIED == []
    await serves(tc)


@pytest.mark.parametrize(
    ("label", "headers"),
    [
        ("NUL in a value", {"x-tenant": "a\x00b"}),
        ("NUL in a name", {"x\x00": "v"}),
        ("value over 8 KiB", {"x-big": "v" * 8193}),
        ("65 headers", {f"h{i}": "v" for i in range(65)}),
    ],
)
async def test_bad_headers_are_refused_for_volatile_and_persisted_calls(
    tc: TestCluster, label: str, headers: dict[str, str]
) -> None:
    for persisted in (False, True):
        with pytest.raises(ClusterError) as info:
            await tc.client_member.send_raw("Account", "h", "balance_of", b"",
                                            persisted=persisted, headers=headers)
        refused(info.value, Reason.INVALID_ARGUMENT)
        assert info.value.details["field"] == "headers"
    assert await stored(tc.storage) == 0
    await serves(tc)


# ---- one size limit, checked before anything is stored ----------------------

async def test_a_persisted_call_over_the_size_limit_is_not_stored(tc: TestCluster) -> None:
    PUT.clear()
    for discard in (False, True):
        with pytest.raises(ClusterError) as info:
            await tc.client(Store, "big", discard=discard).put(TOO_BIG)
        refused(info.value, Reason.FRAME_TOO_LARGE)
        assert info.value.details["size"] > info.value.details["limit"]
    payload = covey.core.MsgpackCodec().encode(TOO_BIG)
    with pytest.raises(ClusterError) as info:
        await tc.client_member.send_raw("LimitsStore", "big", "put", payload, persisted=True)
    refused(info.value, Reason.FRAME_TOO_LARGE)
    assert await stored(tc.storage, "LimitsStore") == 0
    assert PUT == []
    assert await tc.client(Store, "big").put("fits") == 4
    await serves(tc)


async def test_a_volatile_call_over_the_size_limit_is_refused(tc: TestCluster) -> None:
    PUT.clear()
    for member in (tc.client_member, tc.runners[0]):  # remote owner or maybe local
        with pytest.raises(ClusterError) as info:
            await member.client(Store, "big").echo(TOO_BIG)
        refused(info.value, Reason.FRAME_TOO_LARGE)
    assert PUT == []
    await serves(tc)


async def test_a_job_over_the_size_limit_is_not_stored() -> None:
    ran: list[int] = []
    definitions: list[Any] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("limits.echo")
        async def echo(job: covey.JobContext, text: str) -> int:
            ran.append(len(text))
            return len(text)

        definitions.append(echo)

    async with TestCluster(Account, runners=1, configure=configure) as tc:
        echo = definitions[-1]  # the client member's definition
        with pytest.raises(ClusterError) as info:
            await echo.submit(TOO_BIG)
        refused(info.value, Reason.FRAME_TOO_LARGE)
        assert await stored(tc.storage, "covey.Job") == 0
        handle = await echo.submit("fits")
        assert await handle.result(timeout=5) == 4
        assert ran == [4]


# ---- unknown entity types and RPCs ------------------------------------------

@pytest.mark.parametrize(
    ("entity_type", "tag", "reason"),
    [("Nope", "ping", Reason.UNKNOWN_ENTITY_TYPE), ("Account", "nope", Reason.UNKNOWN_RPC)],
)
async def test_a_persisted_call_nobody_can_run_is_completed_with_its_error(
    tc: TestCluster, entity_type: str, tag: str, reason: Reason
) -> None:
    with pytest.raises(EntityError) as info:
        await tc.client_member.send_raw(entity_type, "x", tag, b"", persisted=True, timeout=5)
    refused(info.value, reason)
    # completed with that error: never handed out again by a storage read
    records = await tc.storage.messages.list_messages(entity_type)
    assert len(records) == 1
    record = records[0]
    assert record.reply is not None and record.reply.is_error
    assert await tc.storage.messages.list_messages(entity_type, state="unprocessed") == []
    shard = record.message.address.shard
    await tc.storage.messages.reset_shards([shard])  # as a new owner would
    assert [m for m in await tc.storage.messages.unprocessed([shard], limit=100)
            if m.id == record.message.id] == []
    await serves(tc)


# ---- the typed client's own mistakes ------------------------------------------

async def test_the_typed_client_refuses_argument_mistakes_with_typed_errors(
    tc: TestCluster,
) -> None:
    APPLIED.clear()
    account: Any = tc.client(Account, "args")
    with pytest.raises(ClusterError) as info:
        await account.deposit()  # needs its argument
    refused(info.value, Reason.INVALID_ARGUMENT)
    assert info.value.details["field"] == "argument"
    with pytest.raises(ClusterError) as info:
        await account.balance_of(5)  # takes none
    refused(info.value, Reason.INVALID_ARGUMENT)
    with pytest.raises(ClusterError) as info:
        await account.deposit(Deposit(txn_id="a", amount=1), Deposit(txn_id="b", amount=1))
    refused(info.value, Reason.INVALID_ARGUMENT)
    with pytest.raises(ClusterError) as info:  # an instance the model would refuse
        await account.deposit(Deposit.model_construct(txn_id="c", amount="lots"))
    assert info.value.reason is Reason.PAYLOAD_INVALID and not info.value.retryable
    changed = Deposit(txn_id="d", amount=1)
    changed.amount = "lots"  # type: ignore[assignment]
    with pytest.raises(ClusterError) as info:
        await account.deposit(changed)
    assert info.value.reason is Reason.PAYLOAD_INVALID
    with pytest.raises(ClusterError) as info:
        account.no_such_rpc  # noqa: B018 - the lookup itself must fail
    refused(info.value, Reason.UNKNOWN_RPC)
    assert isinstance(info.value, AttributeError)  # hasattr() keeps working
    assert not hasattr(account, "no_such_rpc")
    assert await stored(tc.storage) == 0 and APPLIED == []
    await serves(tc)


# ---- delivery timers never spin -------------------------------------------------

class _Spinning(Exception):
    pass


async def _timer_messenger(
    clock: TestClock, tasks: TaskSet
) -> tuple[Messenger, list[float]]:
    config = CoveyConfig(database_url="memory://", shards=4)
    storage = InMemoryStorage(shards=4, options=config.storage, clock=clock)
    address = RunnerAddress("r", 1)
    sharding = Sharding(config, storage, clock, address=address)
    messenger = Messenger(config, storage, LocalTransport(LocalNetwork(), address),
                          sharding, clock, deliveries=DeliveryRegistry(), tasks=tasks)
    pokes: list[float] = []

    def poke() -> None:
        pokes.append(clock.now())
        if len(pokes) > 1000:  # a loop that never awaits: stop it instead of hanging
            raise _Spinning

    messenger._reader.poke = poke  # type: ignore[method-assign]  # the timers' target
    return messenger, pokes


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_a_delivery_timer_that_is_not_a_finite_time_never_spins(bad: float) -> None:
    clock = TestClock()
    crashes: list[BaseException] = []
    tasks = TaskSet("messenger", on_crash=crashes.append)
    messenger, pokes = await _timer_messenger(clock, tasks)
    messenger.start()
    try:
        messenger.schedule(bad)  # as from Messenger.schedule or a corrupt next_due
        for _ in range(50):
            await asyncio.sleep(0)
        assert crashes == [] and len(tasks) == 2
        assert pokes == []  # asleep: neither spinning nor reading storage for it
        # the timer still works for a real time
        messenger.schedule(clock.now() + 5)
        await clock.advance(5)
        for _ in range(10):
            await asyncio.sleep(0)
        assert 0 < len(pokes) < 5
    finally:
        await messenger.close()
    assert crashes == [] and len(tasks) == 0


def test_an_envelope_with_a_time_that_is_not_finite_is_malformed() -> None:
    good = Envelope(Message(1, tc_address(), "deposit", b"", deliver_at=5.0), persisted=True)
    wire = good.to_wire()
    assert Envelope.from_wire(wire).message.deliver_at == 5.0
    for bad in (math.nan, math.inf):
        with pytest.raises(SerializationError) as info:
            Envelope.from_wire({**wire, "d": bad})
        assert info.value.reason is Reason.PAYLOAD_INVALID


def tc_address() -> covey.EntityAddress:
    return covey.EntityAddress("Account", "a", covey.ShardId("default", 1))


async def test_a_job_with_a_nan_delay_is_refused_and_not_stored() -> None:
    definitions: list[Any] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("limits.later")
        async def later(job: covey.JobContext, text: str) -> None:
            return None

        definitions.append(later)

    async with TestCluster(runners=1, configure=configure) as tc:
        for delay in (math.nan, math.inf, -1.0):
            with pytest.raises(ClusterError) as info:
                await definitions[-1].submit("x", delay=delay)
            refused(info.value, Reason.INVALID_ARGUMENT)
        assert await stored(tc.storage, "covey.Job") == 0
        assert await tc.storage.messages.next_due(
            [covey.ShardId("default", i) for i in range(1, 31)]) is None


@pytest.mark.parametrize("kind", ["singleton", "cron"])
async def test_a_singleton_or_cron_name_no_shard_can_take_is_refused_when_declared(
    kind: str,
) -> None:
    cluster = covey.Cluster(CoveyConfig(database_url="memory://"),
                            transport=LocalTransport(LocalNetwork(), RunnerAddress("r", 1)))

    async def body(*args: Any) -> None:
        return None

    declare = (lambda: cluster.singleton("bad\x00name")(body)) if kind == "singleton" else (
        lambda: cluster.cron("* * * * *", name="bad\x00name")(body))
    with pytest.raises(ClusterError) as info:  # at declaration, not at start
        declare()
    refused(info.value, Reason.INVALID_ARGUMENT)
    async with cluster:  # nothing was registered: the cluster starts
        assert cluster.singletons.specs == {} and cluster.crons is None
