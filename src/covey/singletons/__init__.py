"""Layer 3: singletons and cluster cron — work that runs once across the cluster.

An application declares them with ``@cluster.singleton`` and ``@cluster.cron``;
its functions receive a :class:`SingletonContext` or a :class:`CronTick`, and
``cluster.singleton_health()`` answers with :class:`SingletonHealth`. The
managers that start, stop and schedule them are in
:mod:`covey.singletons.runtime`.
"""

from covey.singletons._cron import CronTick
from covey.singletons._singleton import SingletonContext, SingletonHealth

__all__ = [
    "CronTick",
    "SingletonContext",
    "SingletonHealth",
]
