"""The SQLite backend: the embedded default, for one host.

One database file holds runners, shard leases, messages and state. Several
processes on the same host may share it: the file runs in WAL mode, every write
is a ``BEGIN IMMEDIATE`` transaction (writers queue instead of failing), and
shard ownership is a lease table whose epochs fence stale owners. Writes that
arrive together share one transaction (group commit). For several hosts, use
PostgreSQL.

A unit of work's application handle is a :class:`SqliteTransaction`: its
writes are staged and run inside the unit's commit transaction.
"""

from covey.storage.sqlite._storage import SqliteStorage
from covey.storage.sqlite._transaction import SqliteTransaction

__all__ = ["SqliteStorage", "SqliteTransaction"]
