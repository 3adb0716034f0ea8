"""Layer 5: the :class:`Cluster` facade an application holds."""

from covey.cluster._cluster import Cluster

__all__ = ["Cluster"]
