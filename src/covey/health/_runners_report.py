"""Each runner's active entity instances by type, for the dashboard.

Every serving runner writes the counts of its own ``covey_entities_active``
gauge, with when it started reporting (its age), to the state store under
``covey.health/entities/<runner>`` every few seconds; the dashboard reads the
keys of the live runners (like :mod:`covey.realtime._report` does for
connections). A runner that leaves deletes its key; a killed one's is ignored
once it is no longer registered.

The gauge is the process's: several runners in one process (tests) each report
the process's total.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from covey.core import Clock, metrics
from covey.storage import StateStore
from covey.storage.runtime import overwrite

log = logging.getLogger("covey.health")

ENTITIES_KEY = "covey.health/entities/"
#: seconds between two reports of one runner
REPORT_EVERY = 5.0
#: the longest the farewell delete may take when the loop stops
FORGET_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class EntityCounts:
    """A runner's active entity instances by type when it last reported.

    Attributes:
        runner: its address.
        entities: entity type -> live instances on that runner.
        started: when it started reporting (about when it joined).
        at: when it reported.
    """

    runner: str
    entities: dict[str, int]
    started: float
    at: float


def active_entities() -> dict[str, int]:
    """This process's live entity instances by type (the gauge's samples)."""
    out: dict[str, int] = {}
    for family in metrics.ENTITIES_ACTIVE.collect():
        for sample in family.samples:
            kind = sample.labels.get("entity_type")
            if kind and sample.value > 0:
                out[kind] = int(sample.value)
    return out


class EntityReport:
    """Writes this runner's counts (see the module docstring)."""

    def __init__(self, state: StateStore, clock: Clock, runner: str) -> None:
        self._state = state
        self._clock = clock
        self._key = ENTITIES_KEY + runner
        self._started = clock.now()

    async def run(self) -> None:
        """Report until cancelled; then delete the key (best effort, bounded)."""
        try:
            while True:
                try:
                    await self.report()
                except Exception:
                    log.debug("reporting the active entities failed", exc_info=True)
                await self._clock.sleep(REPORT_EVERY)
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(FORGET_TIMEOUT):
                    await self._state.delete(self._key)

    async def report(self) -> None:
        """Write the counts once."""
        value = json.dumps({"entities": active_entities(), "started": self._started,
                            "at": self._clock.now()}).encode()
        await overwrite(self._state, self._key, value)


async def read_entity_counts(state: StateStore, runners: list[str]) -> list[EntityCounts]:
    """The last report of each of ``runners`` that made one."""
    out: list[EntityCounts] = []
    for runner in runners:
        stored = await state.get(ENTITIES_KEY + runner)
        if stored is None:
            continue
        try:
            raw = json.loads(stored.value)
            counts = {str(k): int(v) for k, v in dict(raw["entities"]).items()}
            out.append(EntityCounts(runner, counts, float(raw["started"]), float(raw["at"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out
