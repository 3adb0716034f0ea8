"""TestCluster: several runners in one process (memory storage, local transport)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Self, TypeVar

from covey.cluster import Cluster
from covey.core import Clock, CoveyConfig, RunnerAddress, ShardingOptions, SystemClock
from covey.core.runtime import shard_for
from covey.entities import Entity
from covey.sharding import LocalNetwork, LocalTransport
from covey.storage import Storage, open_storage
from covey.storage.memory import InMemoryStorage

E = TypeVar("E", bound=Entity)


class TestCluster:
    """N in-process runners sharing one in-memory store.

    Args:
        *entity_types: registered on every runner.
        runners: how many runners to start.
        shards: shards per group (small keeps tests fast).
        clock: a :class:`covey.core.TestClock` to drive time by hand, or the
            system clock (default).
        sharding: options; defaults are shortened for tests.
        configure: called with each new member before it starts, to declare
            singletons and cron the way the application does.
        database_url: ``memory://`` (default) or ``sqlite:///file.db``; every
            member shares the one store.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *entity_types: type[Entity],
        runners: int = 3,
        shards: int = 30,
        clock: Clock | None = None,
        sharding: ShardingOptions | None = None,
        database_url: str = "memory://",
        configure: Callable[[Cluster], None] | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        options = sharding or ShardingOptions(
            heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
            lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=2.0, call_timeout=10.0,
        )
        self.config = CoveyConfig(database_url=database_url, shards=shards, sharding=options)
        # One store shared by every member: runners in one event loop gain nothing
        # from separate SQLite connections but lock contention between them.
        self.storage: Storage = (
            InMemoryStorage(shards=shards, options=self.config.storage, clock=self.clock)
            if database_url.startswith("memory:")
            else open_storage(self.config, clock=self.clock)
        )
        self._shared = _Unowned(self.storage)
        self.network = LocalNetwork()
        self._entity_types = entity_types
        self._next_port = 1
        self.runners: list[Cluster] = []
        self._initial = runners
        self._client: Cluster | None = None
        self._configure = configure

    def _new_runner(self, *, client_only: bool = False) -> Cluster:
        address = RunnerAddress("runner", self._next_port)
        self._next_port += 1
        cluster = Cluster(
            replace(self.config), client_only=client_only, storage=self._shared,
            transport=LocalTransport(self.network, address), clock=self.clock,
        )
        cluster.register(*self._entity_types)
        if self._configure is not None:
            self._configure(cluster)
        return cluster

    async def __aenter__(self) -> Self:
        await self.storage.start()
        try:
            for _ in range(self._initial):
                await self.add_runner(settle=False)
            client = self._new_runner(client_only=True)
            await client.start()
            self._client = client
            await self.settle()
        except BaseException:
            # a member that failed to start closed itself; close what did start, and
            # the shared storage (a SQLite connection thread would outlive the test)
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._client is not None:
                await self._client.stop()
            for runner in list(self.runners):
                await runner.stop()
        finally:
            self._client = None
            self.runners.clear()
            await self.storage.close()

    async def add_runner(self, *, settle: bool = True) -> Cluster:
        """Start one more runner (a scale-up); returns it."""
        runner = self._new_runner()
        await runner.start()
        self.runners.append(runner)
        if settle:
            await self.settle()
        return runner

    async def settle(self, timeout: float = 5.0) -> None:
        """Drive membership and rebalancing until every shard is held by its assignee."""
        members = [*self.runners, *([self._client] if self._client else [])]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for member in members:
                await member.sharding.refresh_membership()
            for member in self.runners:
                await member.sharding.rebalance()
            if self._settled():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the test cluster did not settle")
            await asyncio.sleep(0.01)

    def _settled(self) -> bool:
        expected = self.runners[0].sharding.assignment if self.runners else {}
        for runner in self.runners:
            if runner.sharding.assignment != expected:
                return False
            mine = {s for s, owner in expected.items() if owner == runner.address}
            if set(runner.sharding.owned) != mine:
                return False
        return True

    def client(self, entity_type: type[E], entity_id: str, **options: Any) -> E:
        """A typed client from a client-only member (every call crosses the transport)."""
        assert self._client is not None, "use 'async with TestCluster(...)'"
        return self._client.client(entity_type, entity_id, **options)

    @property
    def client_member(self) -> Cluster:
        assert self._client is not None
        return self._client

    def owner_index(self, entity_type: type[Entity], entity_id: str) -> int:
        """Which runner (index into ``runners``) owns the entity now."""
        group = entity_type.__covey_options__.shard_group
        shard = shard_for(entity_id, self.config.shards, group)
        for i, runner in enumerate(self.runners):
            if shard in runner.sharding.owned:
                return i
        raise LookupError(f"no runner owns {shard}")

    async def kill(self, index: int) -> None:
        """Crash runner ``index``: no goodbye, no release; peers must notice."""
        runner = self.runners.pop(index)
        address = runner.address
        assert address is not None
        self.network.kill(address)  # peers see it gone at once
        await runner.abort()
        await self.storage.runners.expire(address)  # its leases would time out
        await self.settle()

    async def stop_runner(self, index: int) -> None:
        """Stop runner ``index`` gracefully (a rolling deploy)."""
        runner = self.runners.pop(index)
        await runner.stop()
        await self.settle()


class _Unowned:
    """A storage the members use but do not start or close (the harness does)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.backend = storage.backend
        self.runners = storage.runners
        self.messages = storage.messages
        self.state = storage.state
        self.events = storage.events
        self.streams = storage.streams
        self.inspection = storage.inspection

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def info(self) -> Any:
        return await self._storage.info()

    async def __aenter__(self) -> _Unowned:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None
