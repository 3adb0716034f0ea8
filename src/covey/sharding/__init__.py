"""Layer 2: runners, shard assignment and ownership, routing and the transport.

:class:`Sharding` keeps one runner's membership and shard ownership (with
fencing epochs); :class:`Messenger` routes entity messages to their owners and
completes persisted ones exactly once in storage; :class:`RunnerTransport` carries
them between runners (:class:`TcpTransport`, or :class:`LocalTransport` inside
one process).
"""

from covey.sharding._assignment import assign, shards_of
from covey.sharding._envelope import (
    Envelope,
    Reschedule,
    error_for,
    error_payload,
    raise_error_reply,
)
from covey.sharding._local_transport import LocalNetwork, LocalTransport
from covey.sharding._messenger import Deliverer, Messenger
from covey.sharding._sharding import Sharding, ShardListener
from covey.sharding._tcp_transport import TcpTransport
from covey.sharding._transport import RunnerTransport

__all__ = [
    "Deliverer",
    "Envelope",
    "LocalNetwork",
    "LocalTransport",
    "Messenger",
    "Reschedule",
    "RunnerTransport",
    "ShardListener",
    "Sharding",
    "TcpTransport",
    "assign",
    "error_for",
    "error_payload",
    "raise_error_reply",
    "shards_of",
]
