"""Layer 3: singletons and cluster cron — work that runs once across the cluster."""

from covey.singletons._cron import CronManager, CronSpec, CronTick
from covey.singletons._singleton import (
    SingletonContext,
    SingletonHealth,
    SingletonManager,
    SingletonSpec,
)

__all__ = [
    "CronManager",
    "CronSpec",
    "CronTick",
    "SingletonContext",
    "SingletonHealth",
    "SingletonManager",
    "SingletonSpec",
]
