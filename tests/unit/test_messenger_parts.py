"""The messenger on one runner: delivery by entity type, owned tasks, "not yet".

A runner of its own (in-memory storage, a local transport, every shard held)
with deliverers that record what they run, so each test sees the messenger's
part alone: which deliverer a message reaches, that its loops and message runs
live in the task set it was given, and that a message that is not due yet is an
answer, not the public ``not_owner`` error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from covey.core import (
    ClusterError,
    CoveyConfig,
    EntityAddress,
    EntityError,
    Reason,
    RunnerAddress,
    ShardId,
    ShardingOptions,
    StorageError,
    SystemClock,
)
from covey.core.runtime import TaskSet, shard_for
from covey.sharding import LocalNetwork, LocalTransport
from covey.sharding._wire import read_answer
from covey.sharding.runtime import (
    DeliveryRegistry,
    Envelope,
    Messenger,
    Reschedule,
    Sharding,
    error_payload,
    raise_error_reply,
)
from covey.sharding.transport import Body
from covey.storage import Fence, Message, Reply, Storage, UnitOfWork
from covey.storage.memory import InMemoryStorage

SHARDS = 4
ADDRESS = RunnerAddress("local", 1)


class Recorder:
    """A deliverer that answers every message with its entity type."""

    def __init__(self, *, block: asyncio.Event | None = None) -> None:
        self.ran: list[str] = []
        self.block = block

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None) -> Reply | Reschedule:
        if self.block is not None:
            await self.block.wait()
        self.ran.append(envelope.message.address.entity_type)
        return Reply(envelope.message.id, envelope.message.address.entity_type.encode())

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        return None


class Runner:
    def __init__(self, messenger: Messenger, tasks: TaskSet, storage: Storage,
                 crashes: list[BaseException]) -> None:
        self.messenger = messenger
        self.tasks = tasks
        self.storage = storage
        self.crashes = crashes
        self.next_id = 0

    def envelope(self, entity_type: str, *, persisted: bool,
                 deliver_at: float | None = None) -> Envelope:
        self.next_id += 1
        entity_id = f"e{self.next_id}"
        address = EntityAddress(entity_type, entity_id, shard_for(entity_id, SHARDS))
        return Envelope(Message(self.next_id, address, "run", b"", deliver_at=deliver_at),
                        persisted=persisted)


@asynccontextmanager
async def one_runner(deliveries: DeliveryRegistry, storage: Storage | None = None,
                     config: CoveyConfig | None = None) -> AsyncIterator[Runner]:
    config = config or CoveyConfig(database_url="memory://", shards=SHARDS)
    clock = SystemClock()
    storage = storage or InMemoryStorage(shards=SHARDS, options=config.storage, clock=clock)
    await storage.start()
    crashes: list[BaseException] = []
    tasks = TaskSet("covey-messenger", on_crash=crashes.append)
    sharding = Sharding(config, storage, clock, address=ADDRESS)
    messenger = Messenger(config, storage, LocalTransport(LocalNetwork(), ADDRESS), sharding,
                          clock, deliveries=deliveries, tasks=tasks)
    await sharding.join()
    assert len(sharding.owned) == SHARDS
    try:
        yield Runner(messenger, tasks, storage, crashes)
    finally:
        await messenger.close()
        await storage.close()


async def test_each_entity_type_runs_on_its_registered_deliverer() -> None:
    jobs, entities = Recorder(), Recorder()
    deliveries = DeliveryRegistry(entities)
    deliveries.register("covey.Job", jobs)
    async with one_runner(deliveries) as runner:
        for persisted in (False, True):
            for entity_type in ("covey.Job", "Account"):
                reply = await runner.messenger.call(
                    runner.envelope(entity_type, persisted=persisted), timeout=5,
                    discard=False)
                assert reply is not None and reply.payload == entity_type.encode()
    assert jobs.ran == ["covey.Job", "covey.Job"]
    assert entities.ran == ["Account", "Account"]


async def test_a_runner_without_a_deliverer_for_the_type_says_it_hosts_none() -> None:
    async with one_runner(DeliveryRegistry()) as runner:
        answer = await runner.messenger.handle_request(
            None, {"k": "call", "e": runner.envelope("Account", persisted=False).to_wire()})
    assert answer["ok"] is False and answer["r"] == Reason.NOT_OWNER.value
    assert answer["m"] == "this process hosts no entities"


async def test_a_message_not_due_yet_is_answered_not_yet_without_running() -> None:
    entities = Recorder()
    async with one_runner(DeliveryRegistry(entities)) as runner:
        later = runner.envelope("Account", persisted=True, deliver_at=time.time() + 3600)
        await runner.storage.messages.save_request(later.message)
        answer = await runner.messenger.handle_request(
            None, {"k": "push", "e": later.to_wire()})
        # peers of this version read "w" as "not yet"; older ones as the not_owner
        # they always retried on
        assert answer == {"ok": False, "r": "not_owner", "m": "message is not due yet",
                          "d": {}, "w": True}
        # the caller waits for it, and its timeout says what it always said
        with pytest.raises(EntityError) as info:
            await runner.messenger.wait_for_reply(later, timeout=0.2)
    assert info.value.reason is Reason.TIMEOUT
    assert info.value.details["last_reason"] == Reason.NOT_OWNER.value
    assert entities.ran == []


async def test_message_runs_are_tasks_of_the_given_set_and_close_ends_them() -> None:
    block = asyncio.Event()
    entities = Recorder(block=block)
    async with one_runner(DeliveryRegistry(entities)) as runner:
        runner.messenger.start()
        loops = len(runner.tasks)
        assert loops == 2  # the storage read and the delivery timers
        await runner.messenger.call(runner.envelope("Account", persisted=True), timeout=5,
                                    discard=True)
        for _ in range(100):
            if len(runner.tasks) > loops:
                break
            await asyncio.sleep(0)
        running = runner.tasks.tasks
        assert len(running) == loops + 1  # the message runs in the set, blocked
        await runner.messenger.close()
        assert len(runner.tasks) == 0 and all(t.done() for t in running)
        assert runner.crashes == [] and entities.ran == []


class _StuckOnFirst(Recorder):
    """Runs every message at once, except the first one it gets: that one hangs."""

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None) -> Reply | Reschedule:
        if not self.ran:
            self.ran.append("stuck")
            await asyncio.Event().wait()
        return await super().deliver(envelope, unit)


async def test_a_backlog_is_read_again_while_part_of_the_last_read_still_runs() -> None:
    # poll_batch 4: one read hands out 4 messages; a safety poll that never comes
    # in this test, so only the refill can read the rest
    config = CoveyConfig(database_url="memory://", shards=SHARDS,
                         sharding=ShardingOptions(poll_batch=4, poll_interval=3600))
    entities = _StuckOnFirst()
    async with one_runner(DeliveryRegistry(entities), config=config) as runner:
        backlog = [runner.envelope("Account", persisted=True) for _ in range(12)]
        for envelope in backlog:
            await runner.storage.messages.save_request(envelope.message)
        runner.messenger.start()
        runner.messenger.resync()
        ids = [e.message.id for e in backlog]
        async with asyncio.timeout(5):
            while True:  # all but the one that hangs, without waiting for it
                if len(await runner.storage.messages.replies_for(ids)) == 11:
                    break
                await asyncio.sleep(0.001)
    assert len(entities.ran) == 12  # "stuck" and the 11 others, each once


class _BrokenMessages:
    """Storage messages whose read fails with a bug, not a storage error."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def unprocessed(self, shards: object, *, limit: int) -> list[Message]:
        raise RuntimeError("a bug in the storage read")


async def test_a_crashed_read_loop_reaches_the_owner_of_the_task_set() -> None:
    config = CoveyConfig(database_url="memory://", shards=SHARDS)
    storage = InMemoryStorage(shards=SHARDS, options=config.storage, clock=SystemClock())
    async with one_runner(DeliveryRegistry(Recorder()), storage) as runner:
        storage.messages = _BrokenMessages(storage.messages)  # type: ignore[assignment]
        runner.messenger.start()
        runner.messenger.poke()
        for _ in range(100):
            if runner.crashes:
                break
            await asyncio.sleep(0)
        assert [str(e) for e in runner.crashes] == ["a bug in the storage read"]


# ---- one error encoding ---------------------------------------------------------

class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None) -> Reply | Reschedule:
        raise self.error

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        return None


async def test_an_error_keeps_its_reason_and_details_in_every_container() -> None:
    details = {"field": "amount", "limit": 1.5, "fields": ["a", "b"], "missing": None}
    error = EntityError("too much", reason=Reason.INVALID_ARGUMENT, **details)
    async with one_runner(DeliveryRegistry(_Failing(error))) as runner:
        # the answer to a peer's request, carried by a transport as a peer gets it
        answer = await runner.messenger.handle_request(
            None, {"k": "call", "e": runner.envelope("Account", persisted=False).to_wire()})
    network = LocalNetwork()
    caller, owner = (LocalTransport(network, RunnerAddress("local", n)) for n in (2, 3))

    async def answer_it(peer: RunnerAddress | None, body: Body) -> Body:
        return answer

    async def ignore(peer: RunnerAddress | None, body: Body) -> None:
        return None

    await owner.start(answer_it, ignore)
    try:
        with pytest.raises(ClusterError) as over_the_wire:
            read_answer(await caller.request(owner.own_address, {}, timeout=5), 1)
    finally:
        await caller.close()
        await owner.close()
    # the stored error reply of a handler that raised it
    with pytest.raises(ClusterError) as stored:
        raise_error_reply(Reply(1, error_payload(error), is_error=True), "Account.run")
    for decoded in (over_the_wire.value, stored.value):
        assert decoded.reason is Reason.INVALID_ARGUMENT
        assert {k: decoded.details[k] for k in details} == details


async def test_a_reply_write_the_store_refused_once_is_written_again_without_a_rerun() -> None:
    # A plain run (nothing staged) whose reply could not be stored: the write is
    # tried again, the handler is not run again for the store's sake.
    entities = Recorder()
    config = CoveyConfig(database_url="memory://", shards=SHARDS)
    storage = InMemoryStorage(shards=SHARDS, options=config.storage, clock=SystemClock())
    real_save_reply = storage.messages.save_reply
    failed: list[int] = []

    async def flaky_save_reply(reply: Reply, fence: Fence) -> None:
        if not failed:
            failed.append(reply.request_id)
            raise StorageError("connection lost while storing the reply")
        await real_save_reply(reply, fence)

    storage.messages.save_reply = flaky_save_reply  # type: ignore[method-assign]
    async with one_runner(DeliveryRegistry(entities), storage=storage, config=config) as runner:
        envelope = runner.envelope("Account", persisted=True)
        reply = await runner.messenger.call(envelope, timeout=5, discard=False)
        assert reply is not None and reply.payload == b"Account"
        assert failed == [envelope.message.id]
        assert entities.ran == ["Account"]  # once
        stored = await storage.messages.replies_for([envelope.message.id])
        assert stored[envelope.message.id].payload == b"Account"
