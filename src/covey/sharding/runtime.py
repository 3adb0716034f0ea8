"""The sharding machinery a runner is assembled from (not for applications).

The assembly layer (``covey.cluster``) and the features riding on messages
(entities, jobs, singletons, cron) build a runner out of these: membership and
ownership (:class:`Sharding`), routing and completion (:class:`Messenger`), who
runs which entity type (:class:`DeliveryRegistry`), the wire format of a message
and of an error reply, the retention purger and the transports. An application
needs none of it; it writes :mod:`covey.sharding`'s names at most (a transport
for ``Cluster(transport=...)``).
"""

from __future__ import annotations

from covey.sharding._assignment import assign, shards_of
from covey.sharding._delivery import Deliverer, DeliveryRegistry
from covey.sharding._envelope import (
    Completed,
    Deferred,
    Envelope,
    Reschedule,
    check_size,
    error_payload,
    raise_error_reply,
)
from covey.sharding._messenger import Messenger
from covey.sharding._retention import RETENTION_KEY, RetentionPurger, purge_processed
from covey.sharding._sharding import Sharding, ShardListener
from covey.sharding._starts import StartRecords
from covey.sharding._wire_errors import error_for
from covey.sharding.transport import (
    Body,
    LocalNetwork,
    LocalTransport,
    NotifyHandler,
    RequestHandler,
    RunnerTransport,
    TcpTransport,
)

__all__ = [
    "Body",
    "Completed",
    "Deferred",
    "Deliverer",
    "DeliveryRegistry",
    "Envelope",
    "LocalNetwork",
    "LocalTransport",
    "Messenger",
    "NotifyHandler",
    "RETENTION_KEY",
    "RequestHandler",
    "Reschedule",
    "RetentionPurger",
    "RunnerTransport",
    "ShardListener",
    "Sharding",
    "StartRecords",
    "TcpTransport",
    "assign",
    "check_size",
    "error_for",
    "error_payload",
    "purge_processed",
    "raise_error_reply",
    "shards_of",
]
