"""Layer 2: runners, shard assignment and ownership, routing and the transport.

:class:`~covey.sharding.runtime.Sharding` keeps one runner's membership and shard
ownership (with fencing epochs); :class:`~covey.sharding.runtime.Messenger` routes
entity messages to their owners and completes persisted ones exactly once in
storage; a :class:`RunnerTransport` carries them between runners
(:class:`TcpTransport`, or :class:`LocalTransport` inside one process).

An application writes only the transport names here (``Cluster(transport=...)``,
an in-process :class:`LocalNetwork` in tests); the machinery a runner is
assembled from is in :mod:`covey.sharding.runtime`.
"""

from covey.sharding.transport import LocalNetwork, LocalTransport, RunnerTransport, TcpTransport

__all__ = [
    "LocalNetwork",
    "LocalTransport",
    "RunnerTransport",
    "TcpTransport",
]
