"""covey's own health checks, built from the parts of a started member.

- ``<backend>:responseTime`` (critical): one cheap round trip to the storage
  (``SELECT 1`` on PostgreSQL and SQLite).
- ``<backend>:lockConnection`` (PostgreSQL runners): the LISTEN connection that
  carries commit wake-ups; read at the moment of the probe, so readiness fails
  at once when it drops.
- ``shards:owned`` (runners, warns): the shards this runner holds against the
  shards the assignment gives it (fewer while a peer hands them over).
- ``singletons:running`` (runners with singletons, warns): the dead-man's
  switches: every singleton whose shard this runner owns is running, and one
  with an ``expected_interval`` beat within twice that interval.

Client-only members have the storage check only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from covey.core import Clock, HealthOptions
from covey.health._probe import CheckState, iso

if TYPE_CHECKING:
    from covey.core.runtime import TaskSet
    from covey.health._health import HealthParts


@runtime_checkable
class Pingable(Protocol):
    """A storage with a cheap round trip (every built-in backend has one)."""

    async def ping(self) -> None: ...


class BuiltinChecks:
    """The built-in checks of one started member (see the module docstring)."""

    def __init__(self, parts: HealthParts, clock: Clock, options: HealthOptions) -> None:
        self._parts = parts
        self._clock = clock
        self._options = options
        self.backend = parts.storage.backend
        self.service = parts.service
        self.lock_key = f"{self.backend}:lockConnection"

    def checks(self) -> list[CheckState]:
        """The checks the background loop runs for this member."""
        timeout = self._options.timeout
        found = [CheckState(f"{self.backend}:responseTime", self._ping, True, timeout,
                            component_type="datastore", builtin=True)]
        parts = self._parts
        if parts.sharding is not None and parts.sharding.address is not None:
            found.append(CheckState("shards:owned", self._shards, False, timeout,
                                    component_type="component", builtin=True,
                                    observe=self._observe_shards))
            if parts.singletons is not None and parts.singletons.specs:
                found.append(CheckState("singletons:running", self._singletons, False,
                                        timeout, component_type="component", builtin=True,
                                        observe=self._observe_singletons))
        return found

    # ---- the checks --------------------------------------------------------

    async def _ping(self) -> None:
        storage = self._parts.storage
        if isinstance(storage, Pingable):
            await storage.ping()
        else:  # a third-party backend: any cheap read will do
            await storage.runners.live_runners(max_age=0.0)

    async def _shards(self) -> None:
        sharding = self._parts.sharding
        assert sharding is not None
        assigned = {s for s, owner in sharding.assignment.items() if owner == sharding.address}
        missing = assigned - set(sharding.owned)
        if missing and not sharding.shutting_down:
            raise ShardsMissing(f"owns {len(assigned) - len(missing)} of the {len(assigned)} "
                                "shards assigned to it (a peer still holds the others)")

    def _assigned(self) -> int:
        sharding = self._parts.sharding
        assert sharding is not None
        return sum(1 for owner in sharding.assignment.values() if owner == sharding.address)

    def _observe_shards(self) -> dict[str, Any]:
        sharding = self._parts.sharding
        assert sharding is not None
        return {"observedValue": len(sharding.owned), "observedUnit": "shards",
                "assigned": self._assigned()}

    def _observe_singletons(self) -> dict[str, Any]:
        singletons = self._parts.singletons
        assert singletons is not None
        return {"observedValue": singletons.running(), "observedUnit": "running here"}

    async def _singletons(self) -> None:
        singletons, sharding = self._parts.singletons, self._parts.sharding
        assert singletons is not None and sharding is not None
        now, problems = self._clock.now(), []
        running = set(singletons.running())
        for name, spec in sorted(singletons.specs.items()):
            if singletons.shard_of(spec) not in sharding.owned:
                continue  # another runner's job
            if not singletons.started(name):
                problems.append(f"{name} should run here but does not")
                continue
            expected = spec.expected_interval
            if name not in running or expected is None:
                continue  # finished, or no dead-man's switch
            last = max(t for t in (singletons.last_beat(name), singletons.started(name), 0.0)
                       if t is not None)
            if now - last > 2 * expected:
                problems.append(f"{name} has not beaten for {now - last:.1f} s "
                                f"(expected every {expected:g} s)")
        if problems:
            raise SingletonsStuck("; ".join(problems))

    # ---- read at the moment of a probe (no I/O) ------------------------------

    def lock_connected(self) -> bool:
        """Whether the lock (LISTEN) connection is up (true where there is none)."""
        wakeups = self._parts.wakeups
        return wakeups is None or wakeups.wakeups_connected

    def lock_entries(self) -> dict[str, list[dict[str, Any]]]:
        if self._parts.wakeups is None:
            return {}
        up = self.lock_connected()
        entry: dict[str, Any] = {
            "componentType": "datastore", "status": "pass" if up else "fail",
            "critical": True, "observedValue": up, "time": iso(self._clock.now()),
        }
        if not up:
            entry["output"] = "the LISTEN connection is down (reconnecting)"
        return {self.lock_key: [entry]}

    def crashed(self) -> BaseException | None:
        """The error that stopped the runner, if one of its tasks crashed."""
        return None if self._parts.crashed is None else self._parts.crashed()

    def loop_ticks(self) -> list[Any]:
        loops: TaskSet | None = self._parts.loops
        return [] if loops is None else loops.loop_ticks()


class ShardsMissing(Exception):
    """Fewer shards held than assigned (a warning, not a failure)."""


class SingletonsStuck(Exception):
    """A singleton that should run here does not, or stopped beating."""
