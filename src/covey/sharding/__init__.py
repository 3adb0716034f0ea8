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

# assembly: moves to runtime
from covey.sharding.runtime import (
    Deliverer,
    DeliveryRegistry,
    Envelope,
    Messenger,
    Reschedule,
    Sharding,
    ShardListener,
    assign,
    error_for,
    error_payload,
    raise_error_reply,
    shards_of,
)
from covey.sharding.transport import LocalNetwork, LocalTransport, RunnerTransport, TcpTransport

__all__ = [
    "Deliverer",  # assembly: moves to runtime
    "DeliveryRegistry",  # assembly: moves to runtime
    "Envelope",  # assembly: moves to runtime
    "LocalNetwork",
    "LocalTransport",
    "Messenger",  # assembly: moves to runtime
    "Reschedule",  # assembly: moves to runtime
    "RunnerTransport",
    "ShardListener",  # assembly: moves to runtime
    "Sharding",  # assembly: moves to runtime
    "TcpTransport",
    "assign",  # assembly: moves to runtime
    "error_for",  # assembly: moves to runtime
    "error_payload",  # assembly: moves to runtime
    "raise_error_reply",  # assembly: moves to runtime
    "shards_of",  # assembly: moves to runtime
]
