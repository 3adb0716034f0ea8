"""Every SQL statement of the PostgreSQL stream store, by name (``{s}``: the schema).

Like :class:`~covey.storage.postgres._event_queries.EventStatements`: templates
on the class, filled in once per storage; nothing but the schema is formatted
into SQL. Batches travel as arrays (``unnest``): one round trip per statement.
"""

from __future__ import annotations

from covey.storage._stream_rows import ITEM_COLUMNS, MAIL_COLUMNS, ROUTE_COLUMNS

#: ``stream, epoch, last, updated_at, first`` of a head (first: NULL when no item is left)
_HEAD = (
    "h.stream, h.epoch, h.last, h.updated_at,"
    " (SELECT min(i.position) FROM {s}.stream_items i WHERE i.stream = h.stream)"
)


class StreamStatements:
    """The stream-store statements of one schema."""

    # ---- stream items ----------------------------------------------------

    #: the stored items among ($1[i], $2[i]) (stream, id), each with its stream's epoch
    STORED_ITEMS = (
        "SELECT h.epoch, i.stream, i.position, i.id, i.payload, i.headers, i.published_at"
        " FROM unnest($1::text[], $2::int8[]) AS w(stream, id)"
        " JOIN {s}.stream_items i ON i.stream = w.stream AND i.id = w.id"
        " JOIN {s}.stream_heads h ON h.stream = i.stream"
    )
    #: create or move the heads of $1 by $3 positions (a new head gets epoch $2), in
    #: the order given (key order: no deadlock between appenders of several streams);
    #: each row stays locked until the transaction ends, so appenders of one stream
    #: commit in the order of their positions
    MOVE_HEADS = (
        "INSERT INTO {s}.stream_heads AS h (stream, epoch, last, updated_at)"
        " SELECT w.stream, w.epoch, w.n, $4::float8"
        " FROM unnest($1::text[], $2::int8[], $3::int8[]) AS w(stream, epoch, n)"
        " ON CONFLICT (stream) DO UPDATE SET last = h.last + excluded.last,"
        " updated_at = excluded.updated_at RETURNING h.stream, h.epoch, h.last"
    )
    #: the new items; an id stored meanwhile (a concurrent retry) is skipped, and
    #: the caller sees fewer rows than it sent
    INSERT_ITEMS = (
        f"INSERT INTO {{s}}.stream_items ({ITEM_COLUMNS})"
        " SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bytea[], $5::text[],"
        " $6::float8[]) ON CONFLICT (stream, id) DO NOTHING"
    )
    #: one item, one statement, one round trip (its own transaction): nothing when
    #: the stream holds the id already; a concurrent retry of the id that commits
    #: in between makes the insert fail, which undoes the head's move too (no
    #: position is ever burned: positions have no gaps)
    APPEND_ONE = (
        "WITH fresh AS (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM {s}.stream_items"
        " WHERE stream = $1 AND id = $3)),"
        " head AS (INSERT INTO {s}.stream_heads AS h (stream, epoch, last, updated_at)"
        " SELECT $1, $2::int8, 1, $7::float8 FROM fresh ON CONFLICT (stream) DO UPDATE"
        " SET last = h.last + 1, updated_at = excluded.updated_at RETURNING h.epoch, h.last)"
        f" INSERT INTO {{s}}.stream_items ({ITEM_COLUMNS})"
        " SELECT $1, head.last, $3, $4, $5, $6 FROM head"
        " RETURNING (SELECT epoch FROM head), position"
    )
    #: one statement, one snapshot: the head and the items agree; one row with
    #: NULL item columns when no item is after $2, none when there is no head
    READ = (
        f"SELECT {_HEAD}, r.stream, r.position, r.id, r.payload, r.headers, r.published_at"
        " FROM {s}.stream_heads h LEFT JOIN LATERAL ("
        f"SELECT {ITEM_COLUMNS} FROM {{s}}.stream_items"
        " WHERE stream = h.stream AND position > $2 ORDER BY position LIMIT $3) r ON true"
        " WHERE h.stream = $1 ORDER BY r.position"
    )
    HEADS = f"SELECT {_HEAD} FROM {{s}}.stream_heads h WHERE h.stream = ANY($1::text[])"
    STREAM_STATS = (
        "SELECT (SELECT count(*) FROM {s}.stream_heads), (SELECT count(*) FROM {s}.stream_items)"
    )

    # ---- trim ------------------------------------------------------------

    #: idle heads, locked (an appender waits for the trim, then starts a new head);
    #: heads an appender holds are skipped: they are not idle any more
    LOCK_IDLE = (
        "SELECT stream FROM {s}.stream_heads WHERE updated_at < $1 ORDER BY stream"
        " LIMIT $2 FOR UPDATE SKIP LOCKED"
    )
    TRIM_IDLE_ITEMS = (
        "DELETE FROM {s}.stream_items WHERE (stream, position) IN ("
        "SELECT stream, position FROM {s}.stream_items WHERE stream = ANY($1::text[]) LIMIT $2)"
    )
    #: a head goes once it has no item left: positions restart only in a new epoch
    TRIM_IDLE_HEADS = (
        "DELETE FROM {s}.stream_heads WHERE stream IN (SELECT h.stream FROM {s}.stream_heads h"
        " WHERE h.stream = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM {s}.stream_items i"
        " WHERE i.stream = h.stream) LIMIT $2)"
    )
    #: items beyond the last $1 of their stream; never the newest (position = last)
    TRIM_BEYOND_KEEP = (
        "DELETE FROM {s}.stream_items WHERE (stream, position) IN ("
        "SELECT i.stream, i.position FROM {s}.stream_heads h JOIN {s}.stream_items i"
        " ON i.stream = h.stream AND i.position <= h.last - $1 AND i.position < h.last"
        " LIMIT $2 FOR UPDATE OF i SKIP LOCKED)"
    )
    #: items published before $1; never the newest of their stream
    TRIM_PUBLISHED_BEFORE = (
        "DELETE FROM {s}.stream_items WHERE (stream, position) IN ("
        "SELECT i.stream, i.position FROM {s}.stream_items i JOIN {s}.stream_heads h"
        " ON h.stream = i.stream WHERE i.published_at < $1 AND i.position < h.last"
        " LIMIT $2 FOR UPDATE OF i SKIP LOCKED)"
    )

    # ---- routes ----------------------------------------------------------

    PUT_ROUTES = (
        f"INSERT INTO {{s}}.routes ({ROUTE_COLUMNS})"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::float8[]) ON CONFLICT (kind, key, conn) DO UPDATE SET runner = excluded.runner,"
        " tenant = excluded.tenant, expires_at = excluded.expires_at"
    )
    RENEW_ROUTES = "UPDATE {s}.routes SET expires_at = $2 WHERE runner = $1"
    DELETE_ROUTES = (
        "DELETE FROM {s}.routes WHERE kind = $1 AND (key, conn) IN ("
        "SELECT * FROM unnest($2::text[], $3::text[]))"
    )
    DELETE_RUNNER_ROUTES = "DELETE FROM {s}.routes WHERE runner = $1"
    ROUTES = (
        f"SELECT {ROUTE_COLUMNS} FROM {{s}}.routes WHERE kind = $1 AND key = ANY($2::text[])"
        " AND expires_at > $3 ORDER BY key, conn"
    )
    ROUTE_COUNTS = (
        "SELECT runner, kind, count(*) FROM {s}.routes WHERE expires_at > $1"
        " GROUP BY runner, kind"
    )
    PURGE_ROUTES = (
        "DELETE FROM {s}.routes WHERE (kind, key, conn) IN (SELECT kind, key, conn"
        " FROM {s}.routes WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )

    # ---- mailboxes -------------------------------------------------------

    #: seq (identity) is taken in the order given: the order they were stored
    PUT_MAIL = (
        f"INSERT INTO {{s}}.mail ({MAIL_COLUMNS})"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::float8[],"
        " $6::float8[]) ON CONFLICT (key, id) DO NOTHING RETURNING key, id"
    )
    MAIL = (
        f"SELECT {MAIL_COLUMNS} FROM {{s}}.mail WHERE key = $1 AND expires_at > $2"
        " ORDER BY seq LIMIT $3"
    )
    DELETE_MAIL = "DELETE FROM {s}.mail WHERE key = $1 AND id = ANY($2::text[])"
    PURGE_MAIL = (
        "DELETE FROM {s}.mail WHERE (key, id) IN (SELECT key, id FROM {s}.mail"
        " WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )

    def __init__(self, schema: str) -> None:
        for name, template in vars(StreamStatements).items():
            if name.isupper():
                setattr(self, name, template.format(s=schema))
