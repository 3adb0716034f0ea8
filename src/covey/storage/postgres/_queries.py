"""Every SQL statement of the PostgreSQL backend, by name.

The statements are templates on the class :class:`Statements`; ``{s}`` is the
quoted schema. ``Statements(schema)`` fills it in once per storage, so a
backend class reads ``self._sql.UNPROCESSED`` and only binds parameters and maps
rows. Nothing but the schema (and, for :data:`LIST_FILTERS`, a parameter
number) is ever formatted into SQL.
"""

from __future__ import annotations

from covey.storage._rows import MESSAGE_COLUMNS, RECORD_COLUMNS
from covey.storage.postgres._event_queries import INSERT_EVENTS
from covey.storage.postgres._sessions import MAX_APPLICATION_NAME

#: ``(shard_group, shard)`` of the shards given as two arrays ($1 groups, $2 numbers)
_IN_SHARDS = "(shard_group, shard) IN (SELECT * FROM unnest($1::text[], $2::int4[]))"
#: a runner whose recorded lock session is gone is dead, whatever its last
#: heartbeat says (the name check guards against the pid being reused)
_SESSION_GONE = (
    "lock_pid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
    " WHERE a.pid = r.lock_pid"
    f" AND a.application_name = left('covey-lock:' || r.address, {MAX_APPLICATION_NAME}))"
)
#: ``list_messages``: one filter per given argument, ``{n}`` its parameter number
LIST_FILTERS = {
    "unprocessed": " AND NOT processed",
    "processed": " AND processed",
    "error": " AND processed AND reply_is_error",
    "tag": " AND tag = ${n}",
    "before_id": " AND id < ${n}",
}


class Statements:
    """The statements of one schema (class attributes: the templates)."""

    # ---- lifecycle -------------------------------------------------------------
    CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {s}"
    BOOKKEEPING = (
        "CREATE TABLE IF NOT EXISTS {s}.covey_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at double precision NOT NULL)"
    )
    SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM {s}.covey_migrations"
    SEARCH_PATH = "SET LOCAL search_path TO {s}"
    RECORD_MIGRATION = (
        "INSERT INTO {s}.covey_migrations (version, name, applied_at) VALUES ($1, $2, $3)"
    )
    RECORD_SHARD_COUNT = (
        "INSERT INTO {s}.meta (key, value) VALUES ('shards', $1) ON CONFLICT (key) DO NOTHING"
    )
    SHARD_COUNT = "SELECT value FROM {s}.meta WHERE key = 'shards'"
    INFO = (
        "SELECT (SELECT count(*) FROM {s}.runners) AS runners,"
        " (SELECT count(*) FROM {s}.messages) AS total,"
        " (SELECT count(*) FROM {s}.messages WHERE NOT processed) AS unprocessed"
    )
    #: tables, columns, indexes and constraints of schema $1 ($2: its quoted name + ".")
    FINGERPRINT = (
        "SELECT 'table ' || table_name FROM information_schema.tables"
        " WHERE table_schema = $1"
        " UNION ALL SELECT 'column ' || table_name || '.' || column_name || ' '"
        " || data_type || coalesce('/' || udt_name, '') || ' null=' || is_nullable"
        " || ' default=' || coalesce(column_default, '')"
        " FROM information_schema.columns WHERE table_schema = $1"
        " UNION ALL SELECT 'index ' || tablename || ' ' || indexname || ' '"
        " || replace(indexdef, $2, '') FROM pg_indexes WHERE schemaname = $1"
        " UNION ALL SELECT 'constraint ' || c.relname || ' ' || k.conname || ' '"
        " || k.contype::text || ' ' || pg_get_constraintdef(k.oid)"
        " FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid"
        " JOIN pg_namespace AS n ON n.oid = k.connamespace WHERE n.nspname = $1"
    )

    # ---- runners ---------------------------------------------------------------
    XACT_LOCK = "SELECT pg_advisory_xact_lock($1)"
    DELETE_EXPIRED_RUNNERS = "DELETE FROM {s}.runners WHERE last_heartbeat < $1"
    RUNNER_MACHINE_ID = "SELECT machine_id FROM {s}.runners WHERE address = $1"
    #: the lowest machine id in 0..$1 that no registration holds (NULL: none left)
    FREE_MACHINE_ID = (
        "SELECT min(i) FROM generate_series(0, $1::int4) AS i"
        " WHERE i NOT IN (SELECT machine_id FROM {s}.runners)"
    )
    UPSERT_RUNNER = (
        "INSERT INTO {s}.runners (address, machine_id, groups, weight, last_heartbeat)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (address) DO UPDATE SET"
        " groups = EXCLUDED.groups, weight = EXCLUDED.weight,"
        " last_heartbeat = EXCLUDED.last_heartbeat"
    )
    HEARTBEAT = "UPDATE {s}.runners SET last_heartbeat = $2 WHERE address = $1"
    #: runners beaten since $1, and those whose lock session is gone (flagged)
    LIVE_RUNNERS = (
        "SELECT address, machine_id, groups, weight, last_heartbeat, gone FROM ("
        "SELECT address, machine_id, groups, weight, last_heartbeat,"
        f" {_SESSION_GONE} AS gone FROM {{s}}.runners r) AS t"
        " WHERE gone OR last_heartbeat >= $1"
    )
    #: checked again as it deletes: the runner may have come back meanwhile
    REMOVE_GONE_RUNNERS = (
        "DELETE FROM {s}.runners r WHERE address = ANY($1::text[])"
        f" AND last_heartbeat < $2 AND {_SESSION_GONE} RETURNING address, last_heartbeat"
    )
    RECORD_LOCK_SESSION = "UPDATE {s}.runners SET lock_pid = pg_backend_pid() WHERE address = $1"
    SET_LOCK_SESSION = "UPDATE {s}.runners SET lock_pid = $2 WHERE address = $1"
    DELETE_RUNNER = "DELETE FROM {s}.runners WHERE address = $1"
    #: the ordinals (1-based) of the locks taken
    TRY_LOCKS = (
        "SELECT i FROM unnest($1::int4[], $2::int4[]) WITH ORDINALITY AS t(k, n, i)"
        " WHERE pg_try_advisory_lock(k, n)"
    )
    #: a new epoch per shard taken; the row lock of this upsert waits for
    #: completions holding FOR SHARE on the shard, so none of them can commit
    #: under the old epoch afterwards
    BUMP_EPOCHS = (
        "INSERT INTO {s}.shards AS sh (shard_group, shard, epoch, owner, acquired_at)"
        " SELECT g, n, 1, $3, $4 FROM unnest($1::text[], $2::int4[]) AS t(g, n)"
        " ON CONFLICT (shard_group, shard) DO UPDATE SET epoch = sh.epoch + 1,"
        " owner = EXCLUDED.owner, acquired_at = EXCLUDED.acquired_at"
        " RETURNING shard_group, shard, epoch"
    )
    HELD_LOCKS = (
        "SELECT classid::int8, objid::int8 FROM pg_locks WHERE locktype = 'advisory'"
        " AND objsubid = 2 AND granted AND pid = pg_backend_pid()"
    )
    UNLOCK = "SELECT pg_advisory_unlock(k, n) FROM unnest($1::int4[], $2::int4[]) AS t(k, n)"

    # ---- messages: writes (group commit) -----------------------------------------
    INSERT_MESSAGES = (
        "INSERT INTO {s}.messages (id, entity_type, entity_id, shard_group, shard, tag,"
        " payload, headers, primary_key, dedupe_key, deliver_at, priority, created_at)"
        " SELECT t.*, $13::float8 FROM unnest($1::int8[], $2::text[], $3::text[],"
        " $4::text[], $5::int4[], $6::text[], $7::bytea[], $8::text[], $9::text[],"
        " $10::text[], $11::float8[], $12::int2[]) AS t"
        # Both a repeated id and a repeated dedupe key make a Duplicate.
        " ON CONFLICT DO NOTHING RETURNING id"
    )
    ORIGINALS = (
        "SELECT dedupe_key, id, processed, reply, reply_is_error FROM {s}.messages"
        " WHERE id = ANY($1::int8[]) OR dedupe_key = ANY($2::text[])"
    )
    NOTIFY = "SELECT pg_notify($1, s) FROM unnest($2::text[]) AS s"
    #: events stored with their deliveries (a stored id is kept: a retried publish)
    INSERT_EVENTS = INSERT_EVENTS
    #: THE fenced completion: replies ($7 NULL) and reschedules ($7 the new
    #: deliver_at, $8 the error) of one batch, one autocommit statement. FOR SHARE
    #: of the shard rows makes an acquisition that bumps an epoch wait until this
    #: statement ends, so a completion commits before the new epoch or is refused;
    #: FOR UPDATE orders it against a concurrent completion of the same message
    #: (rows locked in one order, so concurrent batches never deadlock). A refused
    #: input changes nothing; the last SELECT reports what the statement saw, for
    #: ``completion_refused`` to name the refusal.
    FENCED_COMPLETE = (
        "WITH input AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::int4[], $4::int8[],"
        " $5::bytea[], $6::bool[], $7::float8[], $8::text[]) WITH ORDINALITY"
        " AS t(id, g, n, epoch, reply, is_error, retry_at, error, ord)),"
        " fence AS (SELECT s.shard_group, s.shard, s.epoch FROM {s}.shards AS s"
        " WHERE (s.shard_group, s.shard) IN (SELECT g, n FROM input)"
        " ORDER BY s.shard_group, s.shard FOR SHARE),"
        " target AS (SELECT m.id, m.shard_group, m.shard, m.processed FROM {s}.messages AS m"
        " WHERE m.id IN (SELECT id FROM input) ORDER BY m.id FOR UPDATE),"
        " done AS (UPDATE {s}.messages AS m SET processed = i.retry_at IS NULL,"
        " processed_at = CASE WHEN i.retry_at IS NULL THEN $9::float8 END,"
        " reply = i.reply, reply_is_error = coalesce(i.is_error, false), lease_until = NULL,"
        " deliver_at = coalesce(i.retry_at, m.deliver_at),"
        " failures = m.failures + (i.retry_at IS NOT NULL)::int,"
        " last_error = CASE WHEN i.retry_at IS NULL THEN m.last_error ELSE i.error END"
        " FROM input AS i"
        " JOIN fence AS f ON f.shard_group = i.g AND f.shard = i.n AND f.epoch = i.epoch"
        " JOIN target AS t ON t.id = i.id AND t.shard_group = i.g AND t.shard = i.n"
        " AND NOT t.processed WHERE m.id = i.id RETURNING m.id, m.failures)"
        " SELECT f.epoch, t.shard_group, t.shard, t.processed, d.id IS NOT NULL AS done,"
        " d.failures FROM input AS i"
        " LEFT JOIN fence AS f ON f.shard_group = i.g AND f.shard = i.n"
        " LEFT JOIN target AS t ON t.id = i.id LEFT JOIN done AS d ON d.id = i.id"
        " ORDER BY i.ord"
    )
    #: the epochs of fenced state writes, FOR SHARE as in FENCED_COMPLETE
    EPOCHS = (
        "SELECT s.shard_group, s.shard, s.epoch FROM {s}.shards AS s"
        " JOIN unnest($1::text[], $2::int4[]) AS t(g, n) ON s.shard_group = t.g"
        " AND s.shard = t.n ORDER BY s.shard_group, s.shard FOR SHARE OF s"
    )

    # ---- messages: reads and maintenance -----------------------------------------
    #: lease the due messages of some shards, by priority then id
    UNPROCESSED = (
        "UPDATE {s}.messages SET lease_until = $4, attempts = attempts + 1"
        " WHERE id IN (SELECT id FROM {s}.messages WHERE NOT processed"
        f" AND {_IN_SHARDS}"
        " AND (deliver_at IS NULL OR deliver_at <= $5)"
        " AND (lease_until IS NULL OR lease_until <= $5)"
        " ORDER BY priority DESC, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {MESSAGE_COLUMNS}"
    )
    NEXT_DUE = (
        "SELECT min(deliver_at) FROM {s}.messages WHERE NOT processed AND deliver_at > $3"
        f" AND {_IN_SHARDS}"
    )
    GET_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages WHERE id = $1"
    FIND_MESSAGE = "SELECT id FROM {s}.messages WHERE dedupe_key = $1"
    REPLIES = (
        "SELECT id, reply, reply_is_error FROM {s}.messages"
        " WHERE id = ANY($1::int8[]) AND processed"
    )
    RESET_SHARDS = (
        "UPDATE {s}.messages SET lease_until = NULL WHERE NOT processed"
        f" AND lease_until IS NOT NULL AND {_IN_SHARDS}"
    )
    RESET_REQUEST = (
        "UPDATE {s}.messages SET processed = false, processed_at = NULL, reply = NULL,"
        " reply_is_error = false, lease_until = NULL, failures = 0, attempts = 0, starts = 0,"
        " last_error = NULL WHERE id = $1"
    )
    MARK_STARTED = (
        "UPDATE {s}.messages SET starts = starts + 1 WHERE id = ANY($1::int8[]) AND NOT processed"
    )
    INSPECT = f"SELECT {RECORD_COLUMNS} FROM {{s}}.messages WHERE id = ANY($1::int8[])"
    #: one arm per state, each on its partial index (messages_address,
    #: messages_errors), so counting the backlog and the dead letters never reads
    #: the (many) successful replies; $2 = false skips those
    COUNT_MESSAGES = (
        "SELECT tag, priority, 'unprocessed', count(*) FROM {s}.messages"
        " WHERE NOT processed AND entity_type = $1 GROUP BY tag, priority"
        " UNION ALL SELECT tag, priority, 'error', count(*) FROM {s}.messages"
        " WHERE processed AND reply_is_error AND entity_type = $1 GROUP BY tag, priority"
        " UNION ALL SELECT tag, priority, 'processed', count(*) FROM {s}.messages"
        " WHERE $2 AND processed AND NOT reply_is_error AND entity_type = $1"
        " GROUP BY tag, priority ORDER BY 1, 2, 3"
    )
    #: ``list_messages`` with :data:`LIST_FILTERS` appended, then ``ORDER BY id DESC LIMIT``
    LIST_MESSAGES = f"SELECT {RECORD_COLUMNS} FROM {{s}}.messages WHERE entity_type = $1"
    DELETE_MESSAGES = "DELETE FROM {s}.messages WHERE id = ANY($1::int8[])"
    #: ``unprocessed_of``: one entity's backlog, oldest first, leased or not
    UNPROCESSED_OF = (
        f"SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages WHERE NOT processed"
        " AND entity_type = $1 AND entity_id = $2 ORDER BY id LIMIT $3"
    )
    CLEAR_ADDRESS = (
        "DELETE FROM {s}.messages WHERE entity_type = $1 AND entity_id = $2 AND NOT processed"
    )
    #: one purge batch of successful replies (a range scan of messages_purge, oldest
    #: first); FOR UPDATE SKIP LOCKED re-checks each row as it is locked (a dead
    #: letter being retried is no longer processed) and never waits on a row
    #: another transaction holds
    PURGE_PROCESSED = (
        "DELETE FROM {s}.messages WHERE id IN (SELECT id FROM {s}.messages"
        " WHERE processed AND NOT reply_is_error AND processed_at < $1"
        " ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )
    #: then error replies of the entity types not kept (messages_errors)
    PURGE_ERRORS = (
        "DELETE FROM {s}.messages WHERE id IN (SELECT id FROM {s}.messages"
        " WHERE processed AND reply_is_error AND processed_at < $1"
        " AND entity_type <> ALL($3::text[])"
        " ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )

    # ---- state -----------------------------------------------------------------
    GET_STATE = "SELECT value, version FROM {s}.state WHERE key = $1"
    STATE_VERSION = "SELECT version FROM {s}.state WHERE key = $1"
    STATE_VERSIONS = "SELECT key, version FROM {s}.state WHERE key = ANY($1::text[])"
    #: many compare-and-sets in one statement (expected NULL: create); the keys
    #: written with their new versions (a key missing: its write was refused)
    SET_STATES_VERSIONS = (
        "WITH input AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[])"
        " AS t(key, value, expected)),"
        " updated AS (UPDATE {s}.state AS st SET value = i.value, version = st.version + 1"
        " FROM input AS i WHERE i.expected IS NOT NULL AND st.key = i.key"
        " AND st.version = i.expected RETURNING st.key, st.version),"
        " created AS (INSERT INTO {s}.state (key, value, version)"
        " SELECT key, value, 1 FROM input WHERE expected IS NULL"
        " ON CONFLICT (key) DO NOTHING RETURNING key, version)"
        " SELECT key, version FROM updated UNION ALL SELECT key, version FROM created"
    )
    #: one fenced compare-and-set in one statement (no BEGIN/COMMIT round trips): the
    #: shard's epoch (FOR SHARE, as FENCED_COMPLETE), and the new version if written
    FENCED_SET_STATE = (
        "WITH fence AS (SELECT s.epoch FROM {s}.shards AS s"
        " WHERE s.shard_group = $4 AND s.shard = $5 FOR SHARE),"
        " updated AS (UPDATE {s}.state AS st SET value = $2, version = st.version + 1"
        " WHERE st.key = $1 AND $3::int8 IS NOT NULL AND st.version = $3"
        " AND (SELECT epoch FROM fence) = $6 RETURNING st.version),"
        " created AS (INSERT INTO {s}.state (key, value, version) SELECT $1, $2, 1"
        " WHERE $3::int8 IS NULL AND (SELECT epoch FROM fence) = $6"
        " ON CONFLICT (key) DO NOTHING RETURNING version)"
        " SELECT (SELECT epoch FROM fence) AS epoch,"
        " coalesce((SELECT version FROM updated), (SELECT version FROM created)) AS version"
    )
    CREATE_STATE = (
        "INSERT INTO {s}.state (key, value, version) VALUES ($1, $2, 1)"
        " ON CONFLICT (key) DO NOTHING RETURNING version"
    )
    UPDATE_STATE = (
        "UPDATE {s}.state SET value = $2, version = version + 1"
        " WHERE key = $1 AND version = $3 RETURNING version"
    )
    #: the compare-and-sets of many units at once (expected NULL: create); returns the
    #: keys written, so a missing key is a conflict
    SET_STATES = (
        "WITH input AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[])"
        " AS t(key, value, expected)),"
        " updated AS (UPDATE {s}.state AS st SET value = i.value, version = st.version + 1"
        " FROM input AS i WHERE i.expected IS NOT NULL AND st.key = i.key"
        " AND st.version = i.expected RETURNING st.key),"
        " created AS (INSERT INTO {s}.state (key, value, version)"
        " SELECT key, value, 1 FROM input WHERE expected IS NULL"
        " ON CONFLICT (key) DO NOTHING RETURNING key)"
        " SELECT key FROM updated UNION ALL SELECT key FROM created"
    )
    DELETE_STATE = "DELETE FROM {s}.state WHERE key = $1"
    DELETE_STATE_AT = "DELETE FROM {s}.state WHERE key = $1 AND version = $2"

    def __init__(self, schema: str) -> None:
        for name, template in vars(Statements).items():
            if name.isupper():
                setattr(self, name, template.format(s=schema))
