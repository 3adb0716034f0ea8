"""Every SQL statement of the SQLite event log, by name.

``{topics}`` takes :func:`topic_filter`; no value is ever formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

from covey.storage._event_rows import EVENT_COLUMNS, GROUP_COLUMNS

#: positions are given here, inside the storing transaction: SQLite has one writer
#: at a time, so they follow commit order. The newest event is never purged, so
#: the numbering never restarts.
INSERT_EVENT = (
    f"INSERT INTO covey_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " (SELECT COALESCE(MAX(position), 0) + 1 FROM covey_events))"
    " ON CONFLICT (id) DO NOTHING"
)
READ_EVENTS = (
    f"SELECT {EVENT_COLUMNS} FROM covey_events WHERE position > ?{{topics}}"
    " ORDER BY position LIMIT ?"
)
GET_EVENT = f"SELECT {EVENT_COLUMNS} FROM covey_events WHERE id = ?"
LAST_POSITION = "SELECT COALESCE(MAX(position), 0) FROM covey_events WHERE 1 = 1{topics}"
POSITION_AT = (
    "SELECT COALESCE(MAX(position), 0) FROM covey_events WHERE published_at < ?{topics}"
)
INSERT_GROUP = (
    f"INSERT INTO covey_event_groups ({GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, 0)"
    " ON CONFLICT (grp, topic) DO NOTHING"
)
GET_GROUP = f"SELECT {GROUP_COLUMNS} FROM covey_event_groups WHERE grp = ? AND topic = ?"
GROUPS = (
    f"SELECT {GROUP_COLUMNS} FROM covey_event_groups WHERE 1 = 1{{filters}}"
    " ORDER BY grp, topic"
)
ADVANCE_GROUP = (
    "UPDATE covey_event_groups SET cursor = MAX(cursor, ?1),"
    " replay_until = CASE WHEN replay_until > MAX(cursor, ?1) THEN replay_until ELSE 0 END"
    " WHERE grp = ?2 AND topic = ?3"
)
REPLAY_GROUP = (
    "UPDATE covey_event_groups SET cursor = ?1, replay = replay + 1,"
    " replay_until = (SELECT COALESCE(MAX(position), 0) FROM covey_events WHERE topic = ?3)"
    " WHERE grp = ?2 AND topic = ?3"
)
DELETE_GROUP = "DELETE FROM covey_event_groups WHERE grp = ?{topics}"
TOPICS = (
    "SELECT topic, COUNT(*), MIN(position), MAX(position), MAX(published_at),"
    " COUNT(*) - COUNT(position) FROM covey_events GROUP BY topic ORDER BY topic"
)
PURGE_EVENTS = (
    "DELETE FROM covey_events WHERE id IN (SELECT e.id FROM covey_events e"
    " WHERE e.position IS NOT NULL AND e.published_at < ?"
    " AND e.position < (SELECT MAX(position) FROM covey_events)"
    " AND e.position <= COALESCE((SELECT MIN(g.cursor) FROM covey_event_groups g"
    " WHERE g.topic = e.topic), e.position)"
    " ORDER BY e.position LIMIT ?)"
)


def topic_filter(topics: Sequence[str] | None, column: str = "topic") -> str:
    """`` AND topic IN (?, …)`` for the given topics ('' for all)."""
    if topics is None:
        return ""
    return f" AND {column} IN ({', '.join('?' * len(topics))})"

#: per group (the entity id up to its first "/"): pending deliveries, the oldest
#: of them, dead ones
DELIVERY_STATS = (
    "SELECT substr(entity_id, 1, instr(entity_id, '/') - 1) AS grp,"
    " sum(processed = 0), min(CASE WHEN processed = 0 THEN created_at END),"
    " sum(processed = 1 AND reply_is_error = 1)"
    " FROM covey_messages WHERE entity_type = 'covey.Event'"
    " AND (processed = 0 OR reply_is_error = 1) GROUP BY grp ORDER BY grp"
)
