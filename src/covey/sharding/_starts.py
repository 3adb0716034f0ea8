"""Start records: every run of a stored message that begins is recorded, batched.

Deliverers that count attempts across crashes (jobs, event deliveries) record
each start (``MessageStorage.mark_started``) before the handler runs, so a run
cut short by a crash still counts. One write takes every start that came in
while the previous write was under way: a busy runner writes once per batch,
not once per run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from covey.core import ClusterError
from covey.core.runtime import TaskSet

log = logging.getLogger("covey.messages")


class StartRecords:
    """Records starts through ``mark`` in batches, in tasks of ``tasks``.

    Args:
        mark: stores the starts of these message ids.
        tasks: the set the writing task runs in.
        what: what starts ("job", "event handler"), for task names and log lines.
    """

    def __init__(self, mark: Callable[[list[int]], Awaitable[None]], tasks: TaskSet,
                 what: str) -> None:
        self._mark = mark
        self._tasks = tasks
        self._what = what
        self._pending: list[int] = []
        self._writing: asyncio.Task[None] | None = None

    def started(self, message_id: int) -> None:
        """Record that a run of ``message_id`` begins (written soon, with others)."""
        self._pending.append(message_id)
        if self._writing is None or self._writing.done():
            self._writing = self._tasks.spawn(
                self._write(), name=f"covey-{self._what.replace(' ', '-')}-starts")

    async def _write(self) -> None:
        while self._pending:
            ids, self._pending = self._pending, []
            try:
                await self._mark(ids)
            except ClusterError as exc:
                log.warning("could not record %d %s starts: %s", len(ids), self._what, exc)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (``timeout`` at most) for the starts recorded so far to be written."""
        if self._writing is not None:
            await asyncio.wait([self._writing], timeout=timeout)
