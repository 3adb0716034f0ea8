"""Handoff: the ``failover`` scenario with SIGTERM (graceful stop) instead of SIGKILL.

The victim deregisters, refuses new work, lets its in-flight handlers finish
(the held ``Bench.hold`` calls return on it once it is shutting down) and
releases its shards; ``median_s`` runs from the signal until the survivor holds
every shard and the first pending call has returned. ``new_call_s`` is a
persisted call to a victim entity issued right after the signal, which must
wait for the survivor to own the shard. See ``failover`` for the fields.
"""

from __future__ import annotations

import signal
from typing import Any

from .failover import measure


async def run(quick: bool) -> dict[str, Any]:
    return await measure("handoff", signal.SIGTERM, quick)
