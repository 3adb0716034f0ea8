"""Every SQL statement of the SQLite backend, by name.

The backend classes only bind parameters and map rows. Statements with a
``{…}`` field take a list of ``?`` placeholders (:func:`placeholders`), the
shard filter of :func:`shard_filter`, a filter of :data:`LIST_FILTERS` or a
name read from ``sqlite_master``; no value is ever formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from covey.core import ShardId
from covey.storage._rows import MESSAGE_COLUMNS, RECORD_COLUMNS

# ---- lifecycle (covey.storage.sqlite._storage) ----------------------------------

BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS covey_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)
RECORD_MIGRATION = "INSERT INTO covey_migrations (version, name, applied_at) VALUES (?, ?, ?)"
SHARD_COUNT = "SELECT value FROM covey_meta WHERE key = 'shards'"
RECORD_SHARD_COUNT = "INSERT INTO covey_meta (key, value) VALUES ('shards', ?)"
SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) FROM covey_migrations"
COUNT_RUNNERS = "SELECT COUNT(*) FROM covey_runners"
COUNT_MESSAGES = "SELECT COUNT(*), COALESCE(SUM(processed = 0), 0) FROM covey_messages"
TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
OBJECT_SQL = "SELECT sql FROM sqlite_master WHERE name = ?"
#: the schema fingerprint reads these for each table (names from sqlite_master)
TABLE_INFO = "PRAGMA table_info('{table}')"
FOREIGN_KEYS = "PRAGMA foreign_key_list('{table}')"
INDEXES = "PRAGMA index_list('{table}')"
INDEX_COLUMNS = "PRAGMA index_xinfo('{index}')"

# ---- runners and shard leases (covey.storage.sqlite._runners) -------------------

RUNNER_COLUMNS = "address, machine_id, groups, weight, last_heartbeat"
#: registrations silent longer than the machine-id expiry, except the caller's
DELETE_EXPIRED_RUNNERS = "DELETE FROM covey_runners WHERE last_heartbeat < ? AND address <> ?"
RUNNER_MACHINE_ID = "SELECT machine_id FROM covey_runners WHERE address = ?"
#: the lowest machine id in 0..? that no registration holds (NULL: none left)
FREE_MACHINE_ID = (
    "WITH RECURSIVE ids(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM ids WHERE i < ?)"
    " SELECT min(i) FROM ids WHERE i NOT IN (SELECT machine_id FROM covey_runners)"
)
INSERT_RUNNER = (
    "INSERT INTO covey_runners"
    " (address, machine_id, groups, weight, registered_at, last_heartbeat)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
UPDATE_RUNNER = (
    "UPDATE covey_runners SET groups = ?, weight = ?, last_heartbeat = ? WHERE address = ?"
)
HEARTBEAT = "UPDATE covey_runners SET last_heartbeat = ? WHERE address = ?"
LIVE_RUNNERS = f"SELECT {RUNNER_COLUMNS} FROM covey_runners WHERE last_heartbeat >= ?"
DELETE_RUNNER = "DELETE FROM covey_runners WHERE address = ?"
INSERT_SHARD = "INSERT INTO covey_shards (shard_group, shard) VALUES (?, ?) ON CONFLICT DO NOTHING"
SHARD_LEASE = (
    "SELECT epoch, owner, lease_until FROM covey_shards WHERE shard_group = ? AND shard = ?"
)
#: a new epoch also records when it was acquired; a renewal keeps that time
TAKE_SHARD = (
    "UPDATE covey_shards SET acquired_at = CASE WHEN epoch = ?1 THEN acquired_at ELSE ?6 END,"
    " epoch = ?1, owner = ?2, lease_until = ?3 WHERE shard_group = ?4 AND shard = ?5"
)
REFRESH_SHARD = (
    "UPDATE covey_shards SET lease_until = ? WHERE shard_group = ? AND shard = ?"
    " AND owner = ? AND lease_until > ?"
)
RELEASE_SHARD = (
    "UPDATE covey_shards SET owner = NULL, lease_until = 0"
    " WHERE shard_group = ? AND shard = ? AND owner = ?"
)
RELEASE_ALL = "UPDATE covey_shards SET owner = NULL, lease_until = 0 WHERE owner = ?"
#: the fence check: read inside the fenced write's own transaction
SHARD_EPOCH = "SELECT epoch FROM covey_shards WHERE shard_group = ? AND shard = ?"

# ---- messages (covey.storage.sqlite._messages) ----------------------------------

INSERT_MESSAGE = (
    "INSERT INTO covey_messages (id, entity_type, entity_id, shard_group, shard, tag,"
    " payload, headers, primary_key, dedupe_key, deliver_at, priority, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
ORIGINAL_BY_KEY = (
    "SELECT id, processed, reply, reply_is_error FROM covey_messages WHERE dedupe_key = ?"
)
ORIGINAL_BY_ID = "SELECT id, processed, reply, reply_is_error FROM covey_messages WHERE id = ?"
#: what the fenced-completion rule needs to know about the message
COMPLETION_TARGET = "SELECT shard_group, shard, processed FROM covey_messages WHERE id = ?"
COMPLETE = (
    "UPDATE covey_messages SET processed = 1, processed_at = ?, reply = ?,"
    " reply_is_error = ?, lease_until = NULL WHERE id = ?"
)
RESCHEDULE = (
    "UPDATE covey_messages SET deliver_at = ?, lease_until = NULL,"
    " failures = failures + 1, last_error = ? WHERE id = ?"
)
FAILURES = "SELECT failures FROM covey_messages WHERE id = ?"
MARK_STARTED = "UPDATE covey_messages SET starts = starts + 1 WHERE processed = 0 AND id IN ({ids})"
INSPECT = f"SELECT {RECORD_COLUMNS} FROM covey_messages WHERE id IN ({{ids}})"
DELETE_MESSAGES = "DELETE FROM covey_messages WHERE id IN ({ids})"
REPLIES = (
    "SELECT id, reply, reply_is_error FROM covey_messages WHERE processed = 1 AND id IN ({ids})"
)
GET_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM covey_messages WHERE id = ?"
FIND_MESSAGE = "SELECT id FROM covey_messages WHERE dedupe_key = ?"
#: the due, unleased messages of some shards, by priority then id (then leased)
UNPROCESSED = (
    f"SELECT {MESSAGE_COLUMNS} FROM covey_messages WHERE processed = 0"
    " AND (deliver_at IS NULL OR deliver_at <= ?) AND (lease_until IS NULL OR lease_until <= ?)"
    " AND {shards} ORDER BY priority DESC, id LIMIT ?"
)
LEASE = "UPDATE covey_messages SET lease_until = ?, attempts = attempts + 1 WHERE id IN ({ids})"
NEXT_DUE = (
    "SELECT min(deliver_at) FROM covey_messages WHERE processed = 0 AND deliver_at > ?"
    " AND {shards}"
)
RESET_SHARDS = (
    "UPDATE covey_messages SET lease_until = NULL"
    " WHERE processed = 0 AND lease_until IS NOT NULL AND {shards}"
)
RESET_REQUEST = (
    "UPDATE covey_messages SET processed = 0, processed_at = NULL, reply = NULL,"
    " reply_is_error = 0, lease_until = NULL, failures = 0, attempts = 0, starts = 0,"
    " last_error = NULL WHERE id = ?"
)
#: ``unprocessed_of``: one entity's backlog, oldest first, leased or not
UNPROCESSED_OF = (
    f"SELECT {MESSAGE_COLUMNS} FROM covey_messages WHERE processed = 0"
    " AND entity_type = ? AND entity_id = ? ORDER BY id LIMIT ?"
)
CLEAR_ADDRESS = (
    "DELETE FROM covey_messages WHERE processed = 0 AND entity_type = ? AND entity_id = ?"
)
#: ``list_messages``: one filter per given argument, newest first
LIST_MESSAGES = (
    f"SELECT {RECORD_COLUMNS} FROM covey_messages WHERE entity_type = ?{{filters}}"
    " ORDER BY id DESC LIMIT ?"
)
LIST_FILTERS = {
    "unprocessed": " AND processed = 0",
    "processed": " AND processed = 1",
    "error": " AND processed = 1 AND reply_is_error = 1",
    "tag": " AND tag = ?",
    "before_id": " AND id < ?",
}
#: ``count_messages``: one arm per state, each on its partial index, so counting the
#: backlog and the dead letters never reads the (many) successful replies
COUNT_UNPROCESSED = (
    "SELECT tag, priority, 'unprocessed', count(*) FROM covey_messages"
    " WHERE processed = 0 AND entity_type = ? GROUP BY tag, priority"
)
COUNT_ERRORS = (
    "SELECT tag, priority, 'error', count(*) FROM covey_messages"
    " WHERE processed = 1 AND reply_is_error = 1 AND entity_type = ? GROUP BY tag, priority"
)
COUNT_PROCESSED = (
    "SELECT tag, priority, 'processed', count(*) FROM covey_messages"
    " WHERE processed = 1 AND reply_is_error = 0 AND entity_type = ? GROUP BY tag, priority"
)
#: one purge batch of successful replies (covey_messages_purge), oldest first
PURGE_PROCESSED = (
    "DELETE FROM covey_messages WHERE id IN (SELECT id FROM covey_messages"
    " WHERE processed = 1 AND reply_is_error = 0 AND processed_at < ?"
    " ORDER BY processed_at LIMIT ?)"
)
#: then error replies except the kept entity types (covey_messages_errors)
PURGE_ERRORS = (
    "DELETE FROM covey_messages WHERE id IN (SELECT id FROM covey_messages"
    " WHERE processed = 1 AND reply_is_error = 1 AND processed_at < ?"
    " AND entity_type NOT IN ({kept}) ORDER BY processed_at LIMIT ?)"
)

# ---- state (covey.storage.sqlite._state) ----------------------------------------

GET_STATE = "SELECT value, version FROM covey_state WHERE key = ?"
STATE_VERSION = "SELECT version FROM covey_state WHERE key = ?"
CREATE_STATE = (
    "INSERT INTO covey_state (key, value, version) VALUES (?, ?, 1) ON CONFLICT DO NOTHING"
)
UPDATE_STATE = (
    "UPDATE covey_state SET value = ?, version = version + 1 WHERE key = ? AND version = ?"
)
DELETE_STATE = "DELETE FROM covey_state WHERE key = ?"
DELETE_STATE_AT = "DELETE FROM covey_state WHERE key = ? AND version = ?"


def placeholders(values: Iterable[object]) -> str:
    """``?, ?, ?`` for ``values``."""
    return ", ".join("?" for _ in values)


def shard_filter(shards: Collection[ShardId]) -> tuple[str, list[Any]]:
    """``((shard_group = ? AND shard IN (…)) OR …)`` for ``shards``, with its parameters."""
    by_group: dict[str, list[int]] = {}
    for shard in shards:
        by_group.setdefault(shard.group, []).append(shard.id)
    clauses: list[str] = []
    params: list[Any] = []
    for group, ids in sorted(by_group.items()):
        clauses.append(f"(shard_group = ? AND shard IN ({placeholders(ids)}))")
        params += [group, *ids]
    return "(" + " OR ".join(clauses) + ")", params
