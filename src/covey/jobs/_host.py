"""What the job runner needs from the rest of its runner: :class:`JobHost`.

The :class:`~covey.jobs.runtime.JobRunner` runs handlers; writing their
side effects (a fenced completion, a re-run, start records, progress) belongs to
the messenger and the storage. It gets them through this one protocol at
construction, so it can be tested with a fake and never holds half its
collaborators. :class:`RunnerJobHost` is the one the assembly builds.
"""

from __future__ import annotations

from typing import Protocol

from covey.core import ShardId
from covey.jobs._jobs import Jobs, progress_key
from covey.sharding.runtime import Messenger
from covey.storage import Reply, Storage


class JobHost(Protocol):
    """The job runner's collaborators on one runner."""

    async def complete(self, shard: ShardId, reply: Reply) -> None:
        """Store ``reply`` as the job's outcome with a write fenced by ``shard``'s epoch."""
        ...

    async def rerun(self, job_id: int) -> None:
        """Reset a stored (dead) job and run it again on this runner."""
        ...

    async def mark_started(self, job_ids: list[int]) -> None:
        """Record that these pushed jobs started (their attempts count)."""
        ...

    async def report(self, job_id: int, fraction: float | None, note: str | None) -> None:
        """Store a running job's progress (``fraction`` None: a heartbeat only)."""
        ...

    async def forget(self, job_id: int) -> None:
        """Drop a finished job's progress record."""
        ...


class RunnerJobHost:
    """:class:`JobHost` over the runner's messenger, storage and :class:`Jobs`."""

    def __init__(self, messenger: Messenger, storage: Storage, jobs: Jobs) -> None:
        self._messenger = messenger
        self._storage = storage
        self._jobs = jobs

    async def complete(self, shard: ShardId, reply: Reply) -> None:
        await self._messenger.complete(shard, reply)

    async def rerun(self, job_id: int) -> None:
        await self._messenger.rerun(job_id)

    async def mark_started(self, job_ids: list[int]) -> None:
        await self._storage.messages.mark_started(job_ids)

    async def report(self, job_id: int, fraction: float | None, note: str | None) -> None:
        await self._jobs.report(job_id, fraction, note)

    async def forget(self, job_id: int) -> None:
        await self._storage.state.delete(progress_key(job_id))
