"""Each runner's open real-time connections, for ``covey status``.

Every runner writes its counts (from its own gauges) to the state store under
``covey.realtime/connections/<runner>`` every few seconds; ``covey status``
reads the keys of the registered runners. A runner that leaves deletes its key;
a killed one's is ignored once it is no longer registered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY

from covey.core import Clock
from covey.storage import StateStore
from covey.storage.runtime import overwrite

log = logging.getLogger("covey.realtime")

CONNECTIONS_KEY = "covey.realtime/connections/"
#: seconds between two reports of one runner
REPORT_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class ConnectionCounts:
    """A runner's real-time connections when it last reported."""

    runner: str
    sse: int
    websocket: int
    users: int
    streams: int
    at: float


def _gauge(kind: str) -> int:
    value = REGISTRY.get_sample_value("covey_realtime_connections", {"kind": kind})
    return int(value or 0)


class ConnectionReport:
    """Writes this runner's counts (see the module docstring)."""

    def __init__(self, state: StateStore, clock: Clock, runner: str,
                 users: Callable[[], int], streams: Callable[[], int]) -> None:
        self._state = state
        self._clock = clock
        self._key = CONNECTIONS_KEY + runner
        self._runner = runner
        self._users = users
        self._streams = streams

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            try:
                await self.report()
            except Exception:
                log.debug("reporting the real-time connections failed", exc_info=True)
            await self._clock.sleep(REPORT_EVERY)

    async def report(self) -> None:
        """Write the counts once."""
        value = json.dumps({"sse": _gauge("sse"), "websocket": _gauge("websocket"),
                            "users": self._users(), "streams": self._streams(),
                            "at": self._clock.now()}).encode()
        await overwrite(self._state, self._key, value)

    async def forget(self) -> None:
        """Delete the key (the runner leaves)."""
        await self._state.delete(self._key)


async def read_connections(state: StateStore, runners: list[str]) -> list[ConnectionCounts]:
    """The last report of each of ``runners`` that made one."""
    out: list[ConnectionCounts] = []
    for runner in runners:
        stored = await state.get(CONNECTIONS_KEY + runner)
        if stored is None:
            continue
        try:
            raw = json.loads(stored.value)
            out.append(ConnectionCounts(runner, int(raw["sse"]), int(raw["websocket"]),
                                        int(raw["users"]), int(raw["streams"]),
                                        float(raw["at"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out

