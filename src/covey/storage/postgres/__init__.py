"""The PostgreSQL backend: the distributed engine of covey.

Every table lives in one schema (``StorageOptions.schema``), so two clusters can
share a database. Shard ownership is a session advisory lock held on one
dedicated connection per runner, with TCP keepalives so a vanished host loses its
locks within seconds; each acquisition bumps the shard's epoch and every
completion write is fenced on it (``FOR SHARE`` of the shard row, so a completion
commits before a new owner's epoch or is refused). Writes that arrive together
share one transaction (group commit). Times come from the injected clock, never
from the database's ``now()``.
"""

from covey.storage.postgres._storage import PostgresStorage
from covey.storage.postgres._transaction import PostgresTransaction

__all__ = ["PostgresStorage", "PostgresTransaction"]
