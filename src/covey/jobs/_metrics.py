"""The cluster-wide job gauges: backlog by name and priority, dead letters by name.

One runner samples them (the owner of the :data:`JOBS_METRICS` singleton), so the
gauges are exported once for the cluster, not once per runner with the same
values. Per-runner job metrics are counted where the jobs run (``_runner``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from covey.core import Clock, metrics
from covey.jobs._definition import JOB_ENTITY
from covey.storage import MessageStorage

#: The singleton whose owner samples the gauges.
JOBS_METRICS = "covey.jobs-metrics"
#: Seconds between two samples.
JOBS_METRICS_INTERVAL = 10.0


DeadLetterHook = Callable[[dict[str, int]], Awaitable[None]]


async def sample_job_metrics(messages: MessageStorage, clock: Clock, *,
                             on_dead: DeadLetterHook | None = None) -> None:
    """Export the backlog and dead-letter gauges every interval, until cancelled.

    ``on_dead`` gets the dead-letter sizes by job name at each sample (a feature
    built on jobs exports its own gauge from them).
    """
    try:
        while True:
            # without the successes: their count grows with the store
            rows = await messages.count_messages(JOB_ENTITY, with_processed=False)
            metrics.JOBS_BACKLOG.clear()
            metrics.JOBS_DEAD_LETTER.clear()
            dead: dict[str, int] = {}
            for name, priority, state, count in rows:
                if state == "unprocessed":
                    metrics.JOBS_BACKLOG.labels(name, str(priority)).set(count)
                elif state == "error":
                    dead[name] = dead.get(name, 0) + count
            for name, count in dead.items():
                metrics.JOBS_DEAD_LETTER.labels(name).set(count)
            if on_dead is not None:
                await on_dead(dead)
            await clock.sleep(JOBS_METRICS_INTERVAL)
    finally:  # another runner exports them now: no stale values here
        metrics.JOBS_BACKLOG.clear()
        metrics.JOBS_DEAD_LETTER.clear()
