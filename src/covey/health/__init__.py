"""The cluster's health: built-in and application checks, liveness and readiness.

``cluster.health`` runs covey's own checks (storage round trip, the lock
connection, shards owned against assigned, singletons' dead-man's switches)
and the application's (:meth:`Health.add`) in the background at a fixed
interval, and answers three probes from what they found, without I/O:
:meth:`Health.live` (event loop and runner loops; never the database),
:meth:`Health.ready` (critical checks, the lock connection, draining) and
:meth:`Health.report` (every check, as ``application/health+json``).
"""

from covey.health._health import Health
from covey.health._probe import Probe

__all__ = ["Health", "Probe"]
