"""``JobDefinition``: what ``@cluster.job`` returns — the handler, plus ``submit``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, overload

from covey.jobs._definition import JobSpec, PriorityName
from covey.jobs._jobs import Delay, JobHandle, Jobs

P = TypeVar("P")


class JobDefinition(Generic[P]):
    """What ``@cluster.job`` returns: the handler, plus ``submit``."""

    def __init__(self, spec: JobSpec, jobs: Callable[[], Jobs]) -> None:
        self.spec = spec
        self._jobs = jobs  # returns the started cluster's Jobs (raises until started)

    @property
    def name(self) -> str:
        return self.spec.name

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (tests)."""
        return await self.spec.fn(*args, **kwargs)

    @overload
    async def submit(  # type: ignore[overload-overlap]
                     self, payload: Sequence[P], *, dedupe_key: None = None,
                     delay: Delay | None = None, priority: PriorityName | int | None = None,
                     transaction: Any = None) -> list[JobHandle]: ...
    @overload
    async def submit(self, payload: P, *, dedupe_key: str | None = None,
                     delay: Delay | None = None, priority: PriorityName | int | None = None,
                     transaction: Any = None) -> JobHandle: ...
    async def submit(self, payload: Any, *, dedupe_key: str | None = None,
                     delay: Delay | None = None, priority: PriorityName | int | None = None,
                     transaction: Any = None) -> JobHandle | list[JobHandle]:
        """Enqueue one job (or a list, in one round trip); returns handle(s).

        Args:
            dedupe_key: a second submit with the same key returns the first job's
                handle (``handle.duplicate``) and enqueues nothing (also inside
                the application's transaction).
            delay: seconds (or a ``timedelta``) before the job may start; finite
                and not negative.
            priority: ``high``/``normal``/``low`` or an int in -32768..32767;
                orders a backlog.
            transaction: an asyncpg connection inside the application's
                transaction: the jobs exist only if it commits (PostgreSQL); or
                ``self.ctx`` in a persisted entity handler: they are stored with
                the handler's commit (any backend).

        Raises:
            ClusterError: ``invalid_argument`` naming the argument
                (``details["field"]``); SerializationError for a payload that does
                not fit the model. Nothing is stored then.
        """
        return await self._jobs().submit_job(self.spec, payload, dedupe_key=dedupe_key,
                                             delay=delay, priority=priority,
                                             transaction=transaction)
