"""The runner-to-runner transport: requests and notifications between runners.

:class:`RunnerTransport` is the contract; :class:`TcpTransport` carries it over
TCP (optionally mutual TLS) with one multiplexed connection per peer, and
:class:`LocalTransport` between the runners of one event loop
(:class:`LocalNetwork`), for tests. Every failure below the application is a
:class:`~covey.core.TransportError` whose ``reason`` says what happened.
"""

from covey.sharding.transport._local import LocalNetwork, LocalTransport
from covey.sharding.transport._protocol import (
    Body,
    NotifyHandler,
    PeerLostCallback,
    RequestHandler,
    RunnerTransport,
)
from covey.sharding.transport._tcp import TcpTransport

__all__ = [
    "Body",
    "LocalNetwork",
    "LocalTransport",
    "NotifyHandler",
    "PeerLostCallback",
    "RequestHandler",
    "RunnerTransport",
    "TcpTransport",
]
