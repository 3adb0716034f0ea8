"""What the dashboard reads and acts through: a started cluster member.

:class:`DashboardSource` is the seam between the dashboard and the cluster
(``covey.dashboard`` sits below ``covey.cluster`` and never imports it): a
:class:`covey.Cluster` satisfies it. Every mutation goes through these public
APIs (``jobs``, ``workflows``, ``events``, ``webhooks``); the bounded reads
(counts by job name, pages of messages, the shard table) come from
``storage.inspection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from covey.core import ClusterError, CoveyConfig, Reason
from covey.events import Events
from covey.health import Health
from covey.jobs import Jobs
from covey.singletons.runtime import CronSpec, SingletonSpec
from covey.storage import InspectionStore, Storage
from covey.webhooks import Webhooks
from covey.workflows import Workflows


class Declared(Protocol):
    """The crons and singletons declared on the member serving the dashboard."""

    @property
    def singletons(self) -> Sequence[SingletonSpec]: ...

    @property
    def crons(self) -> Sequence[CronSpec]: ...


class DashboardSource(Protocol):
    """A started cluster member (:class:`covey.Cluster`), as the dashboard uses it.

    The parts are read on every request, so the dashboard can be built before
    the member starts; a part a member lacks raises ``ClusterError``, which the
    page shows.
    """

    config: CoveyConfig
    storage: Storage

    @property
    def jobs(self) -> Jobs: ...

    @property
    def workflows(self) -> Workflows: ...

    @property
    def events(self) -> Events: ...

    @property
    def webhooks(self) -> Webhooks: ...

    @property
    def health(self) -> Health: ...

    def declarations(self) -> Declared: ...


def inspection_of(storage: Storage) -> InspectionStore:
    """``storage.inspection``: the bounded reads for operators.

    Raises:
        ClusterError: ``invalid_argument`` for a storage without it.
    """
    found = getattr(storage, "inspection", None)
    if found is None:
        raise ClusterError(f"the {storage.backend} storage has no inspection reads "
                           "(storage.inspection): the dashboard needs them",
                           reason=Reason.INVALID_ARGUMENT, field="storage")
    return cast(InspectionStore, found)
