"""Singletons: one running instance cluster-wide, moved with its shard.

A singleton named ``n`` runs on the runner that holds shard
``shard_for("covey.singleton/n")`` and nowhere else. It starts when that shard is
acquired and is cancelled when the shard is released, lost or fenced — before
the shard is given up, so a graceful hand-over never runs two at once. If the
function raises it is restarted with exponential backoff and jitter; if it
returns it is done until the shard moves.

Typed state (``state=Model``) is kept in the StateStore under
``covey.singleton/<name>`` with compare-and-set *fenced by the shard epoch*: a
runner that lost the shard cannot overwrite its successor's state.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from covey.core import (
    MAX_NAME_BYTES,
    Clock,
    ClusterError,
    ClusterPlacement,
    FencedOut,
    MsgpackCodec,
    Reason,
    RequestContext,
    ShardId,
    metrics,
    use_context,
)
from covey.core.runtime import TaskSet, check_text, internal_span, shard_for
from covey.sharding.runtime import Sharding
from covey.singletons._checks import check_name, check_seconds, invalid
from covey.storage import Fence, Storage

log = logging.getLogger("covey.singletons")

S = TypeVar("S")

SingletonFn = Callable[["SingletonContext[Any]"], Awaitable[None]]

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class SingletonSpec:
    """A declared singleton.

    Every field is checked when the spec is made (``invalid_argument`` naming
    it): the name and shard group are stored as text, ``expected_interval`` is
    ``None`` (no dead-man's switch) or a finite number of seconds > 0 (a
    ``timedelta`` becomes seconds), ``state_type`` is ``None`` or callable
    without arguments (it makes the first state).
    """

    name: str
    fn: SingletonFn
    state_type: type[Any] | None
    expected_interval: float | None
    group: str = "default"

    def __post_init__(self) -> None:
        check_name(self.name)
        check_text("shard_group", self.group, max_bytes=MAX_NAME_BYTES)
        if self.expected_interval is not None:
            interval = check_seconds("expected_interval", self.expected_interval, positive=True)
            object.__setattr__(self, "expected_interval", interval)
        if self.state_type is not None and not callable(self.state_type):
            raise invalid("state", f"{self.state_type!r} is not a type")
        if not callable(self.fn):
            raise invalid("fn", f"{self.fn!r} is not an async function")

    @property
    def state_key(self) -> str:
        return f"covey.singleton/{self.name}"

    @property
    def beat_key(self) -> str:
        return f"covey.singleton-beat/{self.name}"


class SingletonContext(Generic[S]):
    """What a running singleton gets.

    Attributes:
        name: the singleton's name.
        state: the last saved state (a fresh ``state_type()`` if none was saved),
            or ``None`` for singletons without state.
        attempt: 0 on the first start on this runner, +1 per restart after a crash.
    """

    def __init__(self, manager: SingletonManager, spec: SingletonSpec, fence: Fence,
                 state: S, version: int | None, attempt: int) -> None:
        self._manager = manager
        self._spec = spec
        self._fence = fence
        self._version = version
        self.name = spec.name
        self.state: S = state
        self.attempt = attempt

    @property
    def shard(self) -> ShardId:
        return self._fence.shard

    async def save_state(self, state: S | None = None) -> None:
        """Persist ``state`` (or ``self.state``) for the next owner.

        Raises:
            FencedOut: this runner no longer owns the singleton; it is being stopped.
        """
        if state is not None:
            self.state = state
        data = self._manager.codec.encode(self.state)
        try:
            self._version = await self._manager.storage.state.set(
                self._spec.state_key, data, expected_version=self._version, fence=self._fence
            )
        except FencedOut:
            log.warning("singleton %s was fenced out; stopping it", self.name)
            await self._manager.sharding.fenced([self._fence.shard])
            raise

    def beat(self) -> None:
        """Record that the singleton is alive (the dead-man's switch reads it)."""
        self._manager.beat(self._spec, self._fence)


class SingletonManager:
    """Starts and stops this runner's singletons as shards come and go."""

    def __init__(self, sharding: Sharding, storage: Storage, clock: Clock, shards: int, *,
                 tasks: TaskSet) -> None:
        self.sharding = sharding
        self.storage = storage
        self.clock = clock
        self.codec = MsgpackCodec()
        self._shards = shards
        self._tasks = tasks  # the running singletons and their beat writes
        self.specs: dict[str, SingletonSpec] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_beat: dict[str, float] = {}
        self._beat_written: dict[str, float] = {}
        self._started: dict[str, float] = {}  # wall-clock start per running name
        self.restarts: dict[str, int] = {}

    def add(self, spec: SingletonSpec) -> None:
        if spec.name in self.specs:
            raise invalid("name", f"singleton {spec.name!r} is declared twice")
        self.shard_of(spec)  # a name no shard can be computed for is refused now
        self.specs[spec.name] = spec

    def shard_of(self, spec: SingletonSpec) -> ShardId:
        return shard_for(f"covey.singleton/{spec.name}", self._shards, spec.group)

    def running(self) -> list[str]:
        """Names of the singletons running on this runner now."""
        return sorted(name for name, task in self._running.items() if not task.done())

    def started(self, name: str) -> float | None:
        """When singleton ``name`` was started on this runner (``None``: not here)."""
        return self._started.get(name) if name in self._running else None

    def last_beat(self, name: str) -> float | None:
        """When singleton ``name`` last called ``ctx.beat()`` here (in memory)."""
        return self._last_beat.get(name)

    # ---- ShardListener ---------------------------------------------------

    async def shards_acquired(self, shards: dict[ShardId, int]) -> None:
        if self._tasks.closed:  # stopped: the next owner runs them
            return
        for spec in self.specs.values():
            shard = self.shard_of(spec)
            if shard in shards and spec.name not in self._running:
                fence = Fence(shard, shards[shard])
                self._started[spec.name] = self.clock.now()
                self._running[spec.name] = self._tasks.spawn(
                    self._supervise(spec, fence), name=f"covey-singleton-{spec.name}")

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        doomed = [name for name in list(self._running)
                  if self.shard_of(self.specs[name]) in shards]
        await self._cancel(doomed)

    async def stop(self) -> None:
        """Cancel the singletons running here and the beat writes in flight."""
        await self._cancel(list(self._running))
        await self._tasks.cancel_all()

    async def _cancel(self, names: list[str]) -> None:
        tasks = [self._running.pop(name) for name in names]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ---- running ---------------------------------------------------------

    async def _supervise(self, spec: SingletonSpec, fence: Fence) -> None:
        attempt = 0
        placement = ClusterPlacement(
            runner_id=str(self.sharding.address), shard_id=str(fence.shard), is_leader=True
        )
        while True:
            try:
                # the span covers the start (state read); the run is the singleton's own
                with internal_span(f"start singleton {spec.name}", attributes={
                    "covey.singleton.name": spec.name, "covey.singleton.attempt": attempt,
                    "covey.shard": str(fence.shard), "covey.runner": placement.runner_id,
                }):
                    context = await self._context(spec, fence, attempt)
                log.info("singleton %s starts on %s (attempt %d)",
                         spec.name, self.sharding.address, attempt)
                with use_context(RequestContext(cluster=placement)):
                    await spec.fn(context)
                log.info("singleton %s finished", spec.name)
                return
            except asyncio.CancelledError:
                raise
            except FencedOut:
                return
            except Exception:
                attempt += 1
                self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
                delay = min(BACKOFF_INITIAL * 2 ** (attempt - 1), BACKOFF_MAX)
                delay *= random.uniform(0.5, 1.0)  # jitter
                log.exception("singleton %s failed; restarting in %.2f s", spec.name, delay)
                await self.clock.sleep(delay)

    async def _context(self, spec: SingletonSpec, fence: Fence,
                       attempt: int) -> SingletonContext[Any]:
        state: Any = None
        version: int | None = None
        if spec.state_type is not None:
            stored = await self.storage.state.get(spec.state_key)
            if stored is None:
                state = spec.state_type()
            else:
                state = self.codec.decode(stored.value, spec.state_type)
                version = stored.version
        return SingletonContext(self, spec, fence, state, version, attempt)

    # ---- heartbeats ------------------------------------------------------

    def beat(self, spec: SingletonSpec, fence: Fence) -> None:
        now = self.clock.now()
        self._last_beat[spec.name] = now
        metrics.SINGLETON_LAST_BEAT.labels(spec.name).set(now)
        interval = spec.expected_interval or 10.0
        if now - self._beat_written.get(spec.name, 0.0) >= max(min(interval / 4, 5.0), 0.2):
            self._beat_written[spec.name] = now
            if not self._tasks.closed:
                self._tasks.spawn(self._write_beat(spec, fence, now),
                                  name=f"covey-singleton-beat-{spec.name}")

    async def _write_beat(self, spec: SingletonSpec, fence: Fence, now: float) -> None:
        data = self.codec.encode(now)
        try:
            for _ in range(3):
                current = await self.storage.state.get(spec.beat_key)
                try:
                    await self.storage.state.set(
                        spec.beat_key, data, fence=fence,
                        expected_version=None if current is None else current.version)
                    return
                except ClusterError as exc:
                    if exc.reason is not Reason.VERSION_CONFLICT:
                        return
        except ClusterError as exc:  # storage unavailable: the next beat writes again
            log.warning("singleton %s: beat not written (%s)", spec.name, exc)

    async def health(self) -> dict[str, SingletonHealth]:
        """The dead-man's switch: is every singleton with an ``expected_interval`` beating?

        Reads the last beat from storage, so any runner (or a client) can answer.
        """
        now = self.clock.now()
        out: dict[str, SingletonHealth] = {}
        for spec in self.specs.values():
            stored = await self.storage.state.get(spec.beat_key)
            last = None if stored is None else self.codec.decode(stored.value, float)
            if spec.expected_interval is None:
                healthy = True
            else:
                healthy = last is not None and now - last <= 2 * spec.expected_interval
            out[spec.name] = SingletonHealth(spec.name, healthy, last,
                                             spec.name in self.running())
        return out


@dataclass(frozen=True)
class SingletonHealth:
    """One singleton as the health check sees it."""

    name: str
    healthy: bool
    last_beat: float | None
    running_here: bool
