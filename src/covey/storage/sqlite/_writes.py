"""The row writes of the SQLite backend shared by group-committed ops and units of work.

Each runs inside a transaction its caller opened; a refusal raises, and the
caller rolls back (a group commit: its savepoint; a unit: everything).
"""

from __future__ import annotations

import sqlite3

from covey.core import ShardId
from covey.storage._errors import completion_refused, message_vanished, version_conflict
from covey.storage._event_rows import event_params
from covey.storage._events_contract import EventRecord
from covey.storage._message import Message, encode_headers
from covey.storage._model import Duplicate, Fence, Saved, SaveResult
from covey.storage._rows import reply_of
from covey.storage._unit import StateWrite
from covey.storage.sqlite import _event_queries as eq
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import changed
from covey.storage.sqlite._runners import current_epoch


def insert_message(conn: sqlite3.Connection, message: Message, now: float) -> SaveResult:
    """Insert ``message`` unless its dedupe key (or id) is stored: then its original."""
    key = message.dedupe_key
    address = message.address
    if changed(conn, q.INSERT_MESSAGE, (
        message.id, address.entity_type, address.entity_id, address.shard.group,
        address.shard.id, message.tag, message.payload, encode_headers(message.headers),
        message.primary_key, key, message.deliver_at, message.priority, now,
    )):
        return Saved(message.id)
    # The dedupe key (or the same id, a retried save) exists already.
    row = None if key is None else conn.execute(q.ORIGINAL_BY_KEY, (key,)).fetchone()
    if row is None:
        row = conn.execute(q.ORIGINAL_BY_ID, (message.id,)).fetchone()
    if row is None:
        raise message_vanished(message.id, "saved (its duplicate was deleted)")
    original, processed, reply, is_error = row
    return Duplicate(original, reply_of(original, reply, is_error) if processed else None)


def check_completable(conn: sqlite3.Connection, message_id: int, fence: Fence) -> None:
    """Apply the fenced-completion rule inside the write's own transaction."""
    row = conn.execute(q.COMPLETION_TARGET, (message_id,)).fetchone()
    refused = completion_refused(
        fence, current_epoch(conn, fence.shard), message_id,
        None if row is None else ShardId(row[0], row[1]), bool(row is not None and row[2]))
    if refused is not None:
        raise refused


def write_state(conn: sqlite3.Connection, write: StateWrite) -> None:
    """The compare-and-set of ``write``; a conflict raises and the commit rolls back."""
    if write.expected_version is None:
        done = changed(conn, q.CREATE_STATE, (write.key, write.value))
    else:
        done = changed(conn, q.UPDATE_STATE, (write.value, write.key, write.expected_version))
    if not done:
        row = conn.execute(q.STATE_VERSION, (write.key,)).fetchone()
        raise version_conflict(write.key, write.expected_version,
                               None if row is None else row[0])


def insert_event(conn: sqlite3.Connection, event: EventRecord) -> None:
    """Insert ``event`` with the next position, unless its id is stored already."""
    conn.execute(eq.INSERT_EVENT, event_params(event))
