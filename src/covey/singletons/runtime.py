"""What covey's assembly wires for singletons and cron; not for applications.

``covey.cluster`` checks declarations into :class:`SingletonSpec` and
:class:`CronSpec` (:func:`cron_spec`), and per runner builds a
:class:`SingletonManager` and a :class:`CronManager`, both listeners of shard
ownership. An application uses ``@cluster.singleton`` / ``@cluster.cron`` and
:mod:`covey.singletons`; nothing here is stable API.
"""

from covey.singletons._cron import CRON_ENTITY, CronFn, CronManager, CronSpec, cron_spec
from covey.singletons._singleton import SingletonFn, SingletonManager, SingletonSpec

__all__ = [
    "CRON_ENTITY",
    "CronFn",
    "CronManager",
    "CronSpec",
    "SingletonFn",
    "SingletonManager",
    "SingletonSpec",
    "cron_spec",
]
