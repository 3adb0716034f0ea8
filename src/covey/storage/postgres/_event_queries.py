"""Every SQL statement of the PostgreSQL event log, by name (``{s}``: the schema).

Like :class:`~covey.storage.postgres._queries.Statements`: templates on the
class, filled in once per storage; nothing but the schema is formatted into SQL.
"""

from __future__ import annotations

from covey.storage._event_rows import EVENT_COLUMNS, GROUP_COLUMNS

#: the events of one flush, deduplicated by id (a retried publish keeps the first)
INSERT_EVENTS = (
    "INSERT INTO {s}.events (id, topic, type, version, key, payload, headers,"
    " published_at, groups)"
    " SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[],"
    " $6::bytea[], $7::text[], $8::float8[], $9::text[])"
    " ON CONFLICT (id) DO NOTHING"
)


class EventStatements:
    """The event-log statements of one schema."""

    #: one sequencer at a time: the loser of the race gives no positions
    SEQUENCE_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
    #: positions for committed events older than every open transaction, in
    #: (xid, id) order, numbered on from the highest given (run after the lock,
    #: in its transaction: the statement's snapshot sees the last sequencer's rows)
    SEQUENCE = (
        "WITH todo AS (SELECT id, row_number() OVER (ORDER BY xid, id) AS n"
        " FROM (SELECT id, xid FROM {s}.events WHERE position IS NULL"
        " AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, id LIMIT $1) t),"
        " base AS (SELECT coalesce(max(position), 0) AS last FROM {s}.events)"
        " UPDATE {s}.events e SET position = base.last + todo.n FROM todo, base"
        " WHERE e.id = todo.id"
    )
    READ = (
        f"SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE position > $1"
        " AND ($2::text[] IS NULL OR topic = ANY($2::text[])) ORDER BY position LIMIT $3"
    )
    #: how far the next $3 events of topic $1 after position $2 reach
    WINDOW_END = (
        "SELECT max(position) FROM (SELECT position FROM {s}.events"
        " WHERE topic = $1 AND position > $2 ORDER BY position LIMIT $3) w"
    )
    #: those events that lack group $4's delivery (groups: a JSON array of names
    #: made of [A-Za-z0-9._-], so the quoted name is an exact match)
    UNFANNED = (
        f"SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE topic = $1 AND position > $2"
        " AND position <= $3 AND strpos(groups, '\"' || $4 || '\"') = 0 ORDER BY position"
    )
    #: per group (the entity id up to its first "/"): pending deliveries, the
    #: oldest of them, dead ones
    DELIVERY_STATS = (
        "SELECT split_part(entity_id, '/', 1) AS grp,"
        " count(*) FILTER (WHERE NOT processed),"
        " min(created_at) FILTER (WHERE NOT processed),"
        " count(*) FILTER (WHERE processed AND reply_is_error)"
        " FROM {s}.messages WHERE entity_type = 'covey.Event'"
        # spelled as the two partial indexes' predicates (messages_pending,
        # messages_dead), so the read is bounded by the pending and dead rows,
        # not by every delivery ever made
        " AND (NOT processed OR (processed AND reply_is_error)) GROUP BY 1 ORDER BY 1"
    )
    GET = f"SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE id = $1"
    LAST_POSITION = (
        "SELECT coalesce(max(position), 0) FROM {s}.events"
        " WHERE $1::text IS NULL OR topic = $1"
    )
    POSITION_AT = (
        "SELECT coalesce(max(position), 0) FROM {s}.events"
        " WHERE published_at < $1 AND ($2::text IS NULL OR topic = $2)"
    )
    INSERT_GROUP = (
        f"INSERT INTO {{s}}.event_groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4,"
        " CASE WHEN $3 = 'latest' THEN (SELECT coalesce(max(position), 0)"
        " FROM {s}.events WHERE topic = $2) ELSE 0 END, 0, 0)"
        " ON CONFLICT (grp, topic) DO NOTHING"
    )
    GET_GROUP = f"SELECT {GROUP_COLUMNS} FROM {{s}}.event_groups WHERE grp = $1 AND topic = $2"
    GROUPS = (
        f"SELECT {GROUP_COLUMNS} FROM {{s}}.event_groups"
        " WHERE ($1::text IS NULL OR topic = $1) AND ($2::text IS NULL OR grp = $2)"
        " ORDER BY grp, topic"
    )
    ADVANCE_GROUP = (
        "UPDATE {s}.event_groups SET cursor = greatest(cursor, $3),"
        " replay_until = CASE WHEN replay_until > greatest(cursor, $3)"
        " THEN replay_until ELSE 0 END WHERE grp = $1 AND topic = $2"
    )
    REPLAY_GROUP = (
        "UPDATE {s}.event_groups SET cursor = $3, replay = replay + 1,"
        " replay_until = (SELECT coalesce(max(position), 0) FROM {s}.events WHERE topic = $2)"
        f" WHERE grp = $1 AND topic = $2 RETURNING {GROUP_COLUMNS}"
    )
    DELETE_GROUP = (
        "DELETE FROM {s}.event_groups WHERE grp = $1 AND ($2::text IS NULL OR topic = $2)"
    )
    TOPICS = (
        "SELECT topic, count(*), min(position), max(position), max(published_at),"
        " count(*) - count(position) FROM {s}.events GROUP BY topic ORDER BY topic"
    )
    #: sequenced events published before $1 that every group of their topic has
    #: passed; the newest event is kept (the sequencer numbers on from it)
    PURGE = (
        "DELETE FROM {s}.events WHERE id IN (SELECT e.id FROM {s}.events e"
        " WHERE e.position IS NOT NULL AND e.published_at < $1"
        " AND e.position < (SELECT max(position) FROM {s}.events)"
        " AND e.position <= coalesce((SELECT min(g.cursor) FROM {s}.event_groups g"
        " WHERE g.topic = e.topic), e.position)"
        " ORDER BY e.position LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )

    def __init__(self, schema: str) -> None:
        for name, template in vars(EventStatements).items():
            if name.isupper():
                setattr(self, name, template.format(s=schema))
