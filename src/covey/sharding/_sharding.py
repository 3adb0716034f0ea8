"""Sharding: membership, assignment and shard ownership of one runner.

A runner registers, heartbeats, reads the live runner set, computes the shard
assignment (the same on every runner), releases shards it should no longer
hold and acquires the ones it should. It never serves a shard it has not
acquired: the epoch returned by the acquisition fences every completion write.

Failure handling:
- a lock refresh that shows a shard gone, or a completion write that is fenced
  out, drops the shard at once (no grace: someone else may own it now);
- runners whose heartbeat is older than ``runner_ttl`` are expired by whoever
  notices first, which frees their leases; on PostgreSQL a dead runner's
  advisory locks vanish with its session and its row stops counting as live at
  once, so failover takes about one membership interval;
- a transport connection to a peer dropping triggers an immediate membership
  check.

Graceful stop: deregister first (peers rebalance at once), refuse new work
("not here"), let in-flight handlers finish within the grace period, release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from covey.core import (
    Clock,
    CoveyConfig,
    RunnerAddress,
    ShardId,
    SnowflakeGenerator,
    StorageError,
    metrics,
)
from covey.core.runtime import TaskSet, sleep_or_wake
from covey.sharding._assignment import assign
from covey.storage import RunnerInfo, Storage

log = logging.getLogger("covey.sharding")


class ShardListener(Protocol):
    """What the layer above does when ownership changes."""

    async def shards_acquired(self, shards: dict[ShardId, int]) -> None:
        """``shards`` (with their epochs) are now ours; start serving them."""
        ...

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop serving ``shards``; with ``graceful`` let in-flight work finish."""
        ...


class Sharding:
    """Membership and shard ownership for one runner (or a client-only process).

    Args:
        config: settings (shard count, sharding options).
        storage: a started storage.
        clock: time source.
        address: this runner's transport address; ``None`` for a client-only
            process that routes calls but owns nothing.
        groups: the shard groups this runner serves.
        weight: this runner's share relative to others.
    """

    def __init__(
        self,
        config: CoveyConfig,
        storage: Storage,
        clock: Clock,
        *,
        address: RunnerAddress | None,
        groups: Sequence[str] = ("default",),
        weight: int = 1,
    ) -> None:
        self._config = config
        self._options = config.sharding
        self._storage = storage
        self._clock = clock
        self.address = address
        # where this process is registered: its transport address, or for a
        # client-only process a unique name that only reserves a machine id
        self.registration = address or RunnerAddress(
            f"client.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}", 0)
        self._served_groups: tuple[str, ...] = tuple(groups) if address else ()
        self._served_weight = weight if address else 0
        self.groups = tuple(groups)
        self.weight = weight
        self.machine_id = 0
        self.snowflake = SnowflakeGenerator(0)
        self.live: list[RunnerInfo] = []
        self.assignment: dict[ShardId, RunnerAddress] = {}
        self.owned: dict[ShardId, int] = {}
        self.shutting_down = False
        self.draining = False  # shards handed over, still registered (drain())
        self.listeners: list[ShardListener] = []
        self._membership_wake = asyncio.Event()
        self._rebalance_wake = asyncio.Event()
        self._assignment_changed = asyncio.Condition()
        self._pending: set[ShardId] = set()
        self._rebalance_lock = asyncio.Lock()
        self._on_change: list[Callable[[], None]] = []
        self._loops: TaskSet | None = None  # where the loops run and record their ticks

    # ---- lifecycle -------------------------------------------------------

    async def join(self) -> None:
        """Register, read membership and take this runner's shards."""
        # Client-only processes register too (weight 0, no groups: they serve
        # nothing), only to hold a machine id of their own for their snowflakes.
        self.machine_id = await self._storage.runners.register(
            self.registration, groups=self._served_groups, weight=self._served_weight
        )
        self.snowflake.machine_id = self.machine_id
        await self.refresh_membership()
        await self.rebalance()

    def start_loops(self, tasks: TaskSet) -> None:
        """Start heartbeats, membership, rebalancing and lock refresh in ``tasks``.

        The loops never end by themselves; one that crashes reaches ``tasks``'
        owner (the runner's supervisor), which stops the runner.
        """
        self._loops = tasks
        tasks.spawn(self._membership_loop(), name="covey-membership")
        tasks.spawn(self._heartbeat_loop(), name="covey-heartbeat")
        if self.address is not None:
            tasks.spawn(self._rebalance_loop(), name="covey-rebalance")
            tasks.spawn(self._lock_refresh_loop(), name="covey-lock-refresh")

    async def drain(self) -> None:
        """Hand every shard over now, but stay registered until :meth:`leave`.

        The registration is kept, serving no shard group: peers stop assigning
        shards to this runner and take its shards at once, while it keeps its
        machine id, so
        the ids it still makes (a draining web pod serves requests for a while)
        cannot collide with those of a new runner that would otherwise be given
        the same machine id.
        """
        if self.address is None or self.shutting_down or self.draining:
            return
        self.draining = True
        self._served_groups = ()  # heartbeat re-registrations serve nothing either
        machine_id = await self._storage.runners.register(
            self.registration, groups=(), weight=self._served_weight)
        if machine_id != self.machine_id:  # the store expired us meanwhile
            self.machine_id = self.snowflake.machine_id = machine_id
        await self.refresh_membership()
        await self.rebalance()

    async def leave(self) -> None:
        """Graceful stop: deregister, hand shards over, release everything."""
        self.shutting_down = True
        with contextlib.suppress(StorageError):
            await self._storage.runners.unregister(self.registration)
        if self.address is None:
            return
        async with self._rebalance_lock:
            owned = set(self.owned)
            if owned:
                await self._lost(owned, graceful=True)
            self.owned.clear()
            with contextlib.suppress(StorageError):
                await self._storage.runners.release_all(self.address)

    # ---- queries ---------------------------------------------------------

    def owner_of(self, shard: ShardId) -> RunnerAddress | None:
        """The runner the assignment gives ``shard`` to (it may not hold it yet)."""
        return self.assignment.get(shard)

    def epoch_of(self, shard: ShardId) -> int | None:
        """Our epoch for ``shard`` if we hold it and are not stopping."""
        if self.shutting_down:
            return None
        return self.owned.get(shard)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever membership or ownership changes."""
        self._on_change.append(callback)

    def wake(self) -> None:
        """Re-read membership now (a peer's connection dropped, a peer is leaving)."""
        self._membership_wake.set()

    async def wait_for_change(self, timeout: float) -> None:
        """Wait until the assignment or ownership changes, at most ``timeout``."""
        async with self._assignment_changed:
            # asyncio.timeout, not wait_for: wait_for runs Condition.wait in a task of
            # its own, and cancelling the caller (a push answered by storage) then
            # broke the condition's lock and left other waiters stuck for good
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._assignment_changed.wait()

    # ---- fencing ---------------------------------------------------------

    async def fenced(self, shards: Iterable[ShardId]) -> None:
        """A completion write for these shards was refused: stop serving them now."""
        lost = {s for s in shards if s in self.owned}
        if not lost:
            return
        log.warning("fenced out of shards %s; stopping their entities",
                    ", ".join(sorted(map(str, lost))))
        metrics.FENCED_TOTAL.inc(len(lost))
        for shard in lost:
            self.owned.pop(shard, None)
        await self._lost(lost, graceful=False)
        await self._changed()
        self._rebalance_wake.set()

    # ---- membership ------------------------------------------------------

    async def refresh_membership(self) -> None:
        """Read the runner set, expire the dead, recompute the assignment."""
        ttl = self._options.runner_ttl
        runners = await self._storage.runners.live_runners(max_age=ttl * 20)
        now = self._clock.now()
        live = [r for r in runners if r.last_heartbeat >= now - ttl]
        live = [r for r in live if r.weight > 0 and r.groups]  # clients serve nothing
        for stale in runners:
            if stale.last_heartbeat < now - ttl and stale.address != self.registration:
                log.warning("runner %s missed heartbeats for %.1f s; expiring it",
                            stale.address, now - stale.last_heartbeat)
                await self._storage.runners.expire(stale.address)
        if (self.shutting_down or self.draining) and self.address is not None:
            live = [r for r in live if r.address != self.address]
        elif self.address is not None and all(r.address != self.address for r in live):
            # Peers may count us dead (our lock session dropped, our heartbeat was
            # late). We are not: count ourselves, and reopen the lock session so
            # they see us again; fencing sorts out any shard taken meanwhile.
            live = sorted([*live, RunnerInfo(self.address, self.machine_id, self.groups,
                                             self.weight, now)], key=lambda r: r.address)
            await self._storage.runners.acquire(self.address, [])
        if [(r.address, r.groups, r.weight) for r in live] != [
            (r.address, r.groups, r.weight) for r in self.live
        ]:
            self.live = live
            groups = sorted({g for r in live for g in r.groups})
            shards = [ShardId(g, i) for g in groups for i in range(1, self._config.shards + 1)]
            self.assignment = assign(shards, live)
            log.info("membership: %d live runners %s", len(live),
                     ", ".join(str(r.address) for r in live))
            self._rebalance_wake.set()
            await self._changed()

    async def _membership_loop(self) -> None:
        while True:
            self._tick("covey-membership", self._options.membership_interval)
            await sleep_or_wake(self._clock, self._membership_wake,
                                self._options.membership_interval)
            self._busy("covey-membership")
            self._membership_wake.clear()
            try:
                await self.refresh_membership()
            except StorageError as exc:
                log.warning("membership refresh failed: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            self._tick("covey-heartbeat", self._options.heartbeat_interval)
            await self._clock.sleep(self._options.heartbeat_interval)
            self._busy("covey-heartbeat")
            if self.shutting_down:
                continue
            try:
                if not await self._storage.runners.heartbeat(self.registration):
                    log.warning("%s was expired by a peer; registering again",
                                self.registration)
                    self.machine_id = await self._storage.runners.register(
                        self.registration, groups=self._served_groups,
                        weight=self._served_weight,
                    )
                    self.snowflake.machine_id = self.machine_id
                    self._membership_wake.set()
            except StorageError as exc:
                log.warning("heartbeat failed: %s", exc)

    # ---- ownership -------------------------------------------------------

    async def rebalance(self) -> None:
        """Release what is no longer ours, acquire what is (retrying held ones)."""
        if self.address is None or self.shutting_down:
            return
        async with self._rebalance_lock:
            if self.shutting_down:
                return
            mine = {s for s, owner in self.assignment.items() if owner == self.address}
            lost = set(self.owned) - mine
            if lost:
                await self._lost(lost, graceful=True)
                for shard in lost:
                    self.owned.pop(shard, None)
                await self._storage.runners.release(self.address, lost)
                log.info("released %d shards", len(lost))
            wanted = mine - set(self.owned)
            if wanted:
                held = await self._storage.runners.acquire(self.address, wanted)
                new = {s: e for s, e in held.items() if s not in self.owned}
                if new:
                    await self._storage.messages.reset_shards(list(new))
                    self.owned.update(new)
                    log.info("acquired %d shards (%d owned)", len(new), len(self.owned))
                    for listener in self.listeners:
                        await listener.shards_acquired(new)
                self._pending = wanted - set(held)
            else:
                self._pending = set()
            if lost or wanted:
                await self._changed()

    async def _rebalance_loop(self) -> None:
        while True:
            interval = (
                self._options.acquire_retry_interval if self._pending
                else self._options.lock_refresh_interval
            )
            self._tick("covey-rebalance", interval)
            await sleep_or_wake(self._clock, self._rebalance_wake, interval)
            self._busy("covey-rebalance")
            self._rebalance_wake.clear()
            try:
                await self.rebalance()
            except StorageError as exc:
                log.warning("rebalance failed: %s", exc)

    async def _lock_refresh_loop(self) -> None:
        assert self.address is not None
        while True:
            self._tick("covey-lock-refresh", self._options.lock_refresh_interval)
            await self._clock.sleep(self._options.lock_refresh_interval)
            self._busy("covey-lock-refresh")
            owned = set(self.owned)
            if not owned or self.shutting_down:
                continue
            try:
                held = await self._storage.runners.refresh(self.address, owned)
            except StorageError as exc:
                log.warning("lock refresh failed: %s", exc)
                continue
            lost = {s for s in owned - held if s in self.owned}
            if lost:
                log.warning("lost the locks of %d shards; stopping them", len(lost))
                await self.fenced(lost)

    # ---- helpers ---------------------------------------------------------

    def _tick(self, loop: str, interval: float) -> None:
        """Loop ``loop`` goes to sleep for ``interval``: it is alive (liveness)."""
        if self._loops is not None:
            self._loops.tick(loop, interval, self._clock.monotonic())

    def _busy(self, loop: str) -> None:
        """Loop ``loop`` woke and waits on storage or listeners: not stalled."""
        if self._loops is not None:
            self._loops.busy(loop, self._clock.monotonic())

    async def _lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        # the last to hear of a shard first is the first to stop (singletons before
        # entity delivery), so nothing runs on a shard after its delivery stopped
        for listener in reversed(self.listeners):
            await listener.shards_lost(shards, graceful=graceful)

    async def _changed(self) -> None:
        if self.address is not None:  # a client-only member in the same process owns none
            metrics.SHARDS_OWNED.set(len(self.owned))
        metrics.RUNNERS_LIVE.set(len(self.live))
        async with self._assignment_changed:
            self._assignment_changed.notify_all()
        for callback in self._on_change:
            callback()
