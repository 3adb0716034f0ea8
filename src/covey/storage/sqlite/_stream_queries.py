"""Every SQL statement of the SQLite stream store, by name.

``{marks}`` takes :func:`marks`; no value is ever formatted into SQL.
"""

from __future__ import annotations

from covey.storage._stream_rows import ITEM_COLUMNS, MAIL_COLUMNS, ROUTE_COLUMNS

# ---- stream items --------------------------------------------------------

#: the stored item of one id, with its stream's epoch
STORED_ITEM = (
    "SELECT h.epoch, i.stream, i.position, i.id, i.payload, i.headers, i.published_at"
    " FROM covey_stream_items i JOIN covey_stream_heads h ON h.stream = i.stream"
    " WHERE i.stream = ? AND i.id = ?"
)
HEAD = "SELECT epoch, last FROM covey_stream_heads WHERE stream = ?"
CREATE_HEAD = (
    "INSERT INTO covey_stream_heads (stream, epoch, last, updated_at) VALUES (?, ?, ?, ?)"
)
MOVE_HEAD = "UPDATE covey_stream_heads SET last = last + ?, updated_at = ? WHERE stream = ?"
INSERT_ITEM = f"INSERT INTO covey_stream_items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
#: ``stream, epoch, last, updated_at, first`` (first: NULL when no item is left)
HEADS = (
    "SELECT h.stream, h.epoch, h.last, h.updated_at,"
    " (SELECT MIN(i.position) FROM covey_stream_items i WHERE i.stream = h.stream)"
    " FROM covey_stream_heads h WHERE h.stream IN ({marks})"
)
READ_ITEMS = (
    f"SELECT {ITEM_COLUMNS} FROM covey_stream_items WHERE stream = ? AND position > ?"
    " ORDER BY position LIMIT ?"
)
STREAM_STATS = (
    "SELECT (SELECT COUNT(*) FROM covey_stream_heads), (SELECT COUNT(*) FROM covey_stream_items)"
)

# ---- trim: idle streams (items first: a head goes once it has none) ------

TRIM_IDLE_ITEMS = (
    "DELETE FROM covey_stream_items WHERE (stream, position) IN ("
    "SELECT i.stream, i.position FROM covey_stream_heads h"
    " JOIN covey_stream_items i ON i.stream = h.stream WHERE h.updated_at < ? LIMIT ?)"
)
TRIM_IDLE_HEADS = (
    "DELETE FROM covey_stream_heads WHERE stream IN (SELECT h.stream FROM covey_stream_heads h"
    " WHERE h.updated_at < ? AND NOT EXISTS (SELECT 1 FROM covey_stream_items i"
    " WHERE i.stream = h.stream) LIMIT ?)"
)
#: items beyond the last ?1 of their stream; never the newest (position = last)
TRIM_BEYOND_KEEP = (
    "DELETE FROM covey_stream_items WHERE (stream, position) IN ("
    "SELECT i.stream, i.position FROM covey_stream_heads h JOIN covey_stream_items i"
    " ON i.stream = h.stream AND i.position <= h.last - ?1 AND i.position < h.last LIMIT ?2)"
)
#: items published before ?1; never the newest of their stream
TRIM_PUBLISHED_BEFORE = (
    "DELETE FROM covey_stream_items WHERE (stream, position) IN ("
    "SELECT i.stream, i.position FROM covey_stream_items i JOIN covey_stream_heads h"
    " ON h.stream = i.stream WHERE i.published_at < ?1 AND i.position < h.last LIMIT ?2)"
)

# ---- routes --------------------------------------------------------------

PUT_ROUTE = (
    f"INSERT INTO covey_routes ({ROUTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, key, conn) DO UPDATE SET runner = excluded.runner,"
    " tenant = excluded.tenant, expires_at = excluded.expires_at"
)
RENEW_ROUTES = "UPDATE covey_routes SET expires_at = ? WHERE runner = ?"
DELETE_ROUTE = "DELETE FROM covey_routes WHERE kind = ? AND key = ? AND conn = ?"
DELETE_RUNNER_ROUTES = "DELETE FROM covey_routes WHERE runner = ?"
ROUTES = (
    f"SELECT {ROUTE_COLUMNS} FROM covey_routes WHERE kind = ? AND key IN ({{marks}})"
    " AND expires_at > ? ORDER BY key, conn"
)
ROUTE_COUNTS = (
    "SELECT runner, kind, COUNT(*) FROM covey_routes WHERE expires_at > ? GROUP BY runner, kind"
)
PURGE_ROUTES = (
    "DELETE FROM covey_routes WHERE rowid IN (SELECT rowid FROM covey_routes"
    " WHERE expires_at <= ? LIMIT ?)"
)

# ---- mailboxes -----------------------------------------------------------

PUT_MAIL = (
    f"INSERT INTO covey_mail ({MAIL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (key, id) DO NOTHING"
)
MAIL = (
    f"SELECT {MAIL_COLUMNS} FROM covey_mail WHERE key = ? AND expires_at > ?"
    " ORDER BY seq LIMIT ?"
)
DELETE_MAIL = "DELETE FROM covey_mail WHERE key = ? AND id IN ({marks})"
PURGE_MAIL = (
    "DELETE FROM covey_mail WHERE seq IN (SELECT seq FROM covey_mail WHERE expires_at <= ?"
    " LIMIT ?)"
)


def marks(count: int) -> str:
    """``?, ?, …``: ``count`` placeholders."""
    return ", ".join("?" * count)
