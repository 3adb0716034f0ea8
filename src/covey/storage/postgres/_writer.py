"""The group-commit flush shared by messages and the state store.

Requests, replies, reschedules and fenced state writes that arrive together are
written by one flush on one pooled connection, with set-based statements: the
saves in one statement, every completion (reply or reschedule) in one
:attr:`~covey.storage.postgres._queries.Statements.FENCED_COMPLETE`, and the
fenced state writes in one transaction. Each op's refusal (fenced, not found,
duplicate reply, version conflict) is decided before anything is written, so a
refused op changes nothing while the others commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from covey.core import Clock, ShardId, VersionConflict
from covey.storage._errors import (
    app_write_failed,
    completion_refused,
    fenced_out,
    message_vanished,
    version_conflict,
)
from covey.storage._event_rows import event_params
from covey.storage._events_contract import EventRecord
from covey.storage._message import Message, encode_headers
from covey.storage._model import Duplicate, Fence, Reply, Saved, SaveResult
from covey.storage._streams_contract import StreamEntry
from covey.storage._unit import StateWrite
from covey.storage.postgres._errors import CONNECTION_ERRORS, is_unavailable, translate
from covey.storage.postgres._queries import Statements
from covey.storage.postgres._stream_queries import StreamStatements
from covey.storage.postgres._streams import store_in
from covey.storage.postgres._transaction import (
    Staged,
    StatementFailed,
    run_staged,
    run_staged_together,
)


@dataclass(frozen=True, slots=True)
class SaveOp:
    """Store these messages (and events: an ``EventStore.append``) atomically."""

    messages: Sequence[Message]
    events: Sequence[EventRecord] = ()


@dataclass(frozen=True, slots=True)
class CompleteOp:
    """Complete one message if ``fence`` is current: with ``reply``, or put it back
    for ``retry_at`` after ``error`` (a reschedule; ``reply`` is ``None``)."""

    request_id: int
    fence: Fence
    reply: Reply | None = None
    retry_at: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StateOp:
    """A compare-and-set of one state key, optionally fenced."""

    key: str
    value: bytes
    expected_version: int | None
    fence: Fence | None


@dataclass(frozen=True, slots=True)
class UnitOp:
    """A unit of work: its reply, its state writes, its outgoing messages, the
    application's staged statements, its published events and its stream items,
    all or nothing."""

    reply: Reply
    fence: Fence
    states: Sequence[StateWrite]
    sent: Sequence[Message]
    staged: Sequence[Staged]
    events: Sequence[EventRecord] = ()
    streams: Sequence[StreamEntry] = ()


Op = SaveOp | CompleteOp | StateOp | UnitOp


class _Split(Exception):
    """One unit of a shared transaction was refused after others wrote: roll it
    back and commit each unit in a transaction of its own."""


class Writer:
    """Runs one batch of ops (the ``GroupCommit`` flush).

    ``streams``: the stream statements of the same schema (units append their
    stream items with them).
    """

    def __init__(self, pool: Any, sql: Statements, clock: Clock, channel: str, *,
                 streams: StreamStatements) -> None:
        self._pool = pool
        self._sql = sql
        self._clock = clock
        self._channel = channel
        self._streams = streams

    async def flush(self, ops: Sequence[Op]) -> list[object]:
        """One outcome per op: its result or the exception for that op alone."""
        out: list[object] = [None] * len(ops)
        saves = [(i, op) for i, op in enumerate(ops) if isinstance(op, SaveOp)]
        completions = [(i, op) for i, op in enumerate(ops) if isinstance(op, CompleteOp)]
        states = [(i, op) for i, op in enumerate(ops) if isinstance(op, StateOp)]
        units = [(i, op) for i, op in enumerate(ops) if isinstance(op, UnitOp)]
        try:
            async with self._pool.acquire() as conn:
                # Ops are independent of each other and each statement is atomic
                # by itself: only the state writes need BEGIN/COMMIT.
                if saves and any(op.events for _, op in saves):
                    async with conn.transaction():  # events with their deliveries
                        await self.save(conn, saves, out)
                elif saves:
                    await self.save(conn, saves, out)
                if completions:
                    await self.complete(conn, completions, out)
                if len(states) == 1 and states[0][1].fence is not None:
                    out[states[0][0]] = await self._set_one_state(conn, states[0][1])
                elif states:
                    async with conn.transaction():
                        await self._set_states(conn, states, out)
                if units:
                    await self._commit_units(conn, units, out)
        except CONNECTION_ERRORS as exc:
            raise translate(exc, "group commit") from exc
        except asyncpg.PostgresError as exc:
            # Re-raised as is unless this is a single op: GroupCommit then splits
            # the batch and the op at fault fails alone with a covey error.
            if len(ops) == 1:
                raise translate(exc, "write") from exc
            raise
        return out

    async def save(self, conn: Any, saves: list[tuple[int, SaveOp]], out: list[object]) -> None:
        """Insert the messages of ``saves``; ``out[i]`` their results (or an error)."""
        if not any(op.messages for _, op in saves):
            for i, _ in saves:
                out[i] = []
            await insert_events(conn, self._sql, [e for _, op in saves for e in op.events])
            return
        rows: list[Message] = []
        by_key: dict[str, int] = {}  # dedupe key -> index in rows of its first message
        by_id: dict[int, int] = {}  # message id -> index in rows
        refs: dict[int, list[int]] = {}  # op index -> row index per message
        for i, op in saves:
            ref: list[int] = []
            for m in op.messages:
                key = m.dedupe_key
                first = by_id.get(m.id)
                if first is None and key is not None:
                    first = by_key.get(key)
                if first is None:
                    first = len(rows)
                    rows.append(m)
                    by_id[m.id] = first
                    if key is not None:
                        by_key[key] = first
                    ref.append(first)
                else:
                    ref.append(~first)  # a repeat within this batch of rows[first]
            refs[i] = ref
        records = await conn.fetch(
            self._sql.INSERT_MESSAGES,
            [m.id for m in rows],
            [m.address.entity_type for m in rows],
            [m.address.entity_id for m in rows],
            [m.address.shard.group for m in rows],
            [m.address.shard.id for m in rows],
            [m.tag for m in rows],
            [m.payload for m in rows],
            [encode_headers(m.headers) for m in rows],
            [m.primary_key for m in rows],
            [m.dedupe_key for m in rows],
            [None if m.deliver_at is None else float(m.deliver_at) for m in rows],
            [m.priority for m in rows],
            self._clock.now(),
        )
        inserted = {r[0] for r in records}
        conflicts = [m for m in rows if m.id not in inserted]
        found_id: dict[int, Duplicate] = {}
        found_key: dict[str, Duplicate] = {}
        if conflicts:
            keys = [m.dedupe_key for m in conflicts if m.dedupe_key is not None]
            for r in await conn.fetch(self._sql.ORIGINALS, [m.id for m in conflicts], keys):
                reply = Reply(r["id"], r["reply"], r["reply_is_error"]) if r["processed"] else None
                found_id[r["id"]] = Duplicate(r["id"], reply)
                if r["dedupe_key"] is not None:
                    found_key[r["dedupe_key"]] = Duplicate(r["id"], reply)
        outcome: list[SaveResult | None] = []
        for m in rows:
            if m.id in inserted:
                outcome.append(Saved(m.id))
            elif m.id in found_id:
                outcome.append(found_id[m.id])
            else:
                outcome.append(found_key.get(m.dedupe_key) if m.dedupe_key else None)
        for i, op in saves:
            final: list[SaveResult] = []
            for j in refs[i]:
                result = outcome[~j] if j < 0 else outcome[j]
                if result is None:
                    break
                if j < 0 and isinstance(result, Saved):
                    result = Duplicate(result.id, None)
                final.append(result)
            out[i] = final if len(final) == len(refs[i]) else message_vanished(
                op.messages[len(final)].id, "saved (its duplicate was deleted)")
        await insert_events(conn, self._sql, [e for _, op in saves for e in op.events])

    async def complete(
        self, conn: Any, ops: list[tuple[int, CompleteOp]], out: list[object]
    ) -> None:
        """Complete the messages of ``ops`` fenced (:attr:`Statements.FENCED_COMPLETE`);
        ``out[i]`` ``None``, the new failure count of a reschedule, or the refusal."""
        # One statement per round; a message completed twice in one batch goes to
        # a later round, which then finds it processed (as if sent one by one).
        while ops:
            seen: set[int] = set()
            now: list[tuple[int, CompleteOp]] = []
            later: list[tuple[int, CompleteOp]] = []
            for item in ops:
                (later if item[1].request_id in seen else now).append(item)
                seen.add(item[1].request_id)
            rows = await conn.fetch(
                self._sql.FENCED_COMPLETE,
                [op.request_id for _, op in now],
                [op.fence.shard.group for _, op in now],
                [op.fence.shard.id for _, op in now],
                [op.fence.epoch for _, op in now],
                [None if op.reply is None else op.reply.payload for _, op in now],
                [None if op.reply is None else op.reply.is_error for _, op in now],
                [op.retry_at for _, op in now],
                [op.error for _, op in now],
                self._clock.now(),
            )
            for (i, op), row in zip(now, rows, strict=True):
                if row["done"]:
                    out[i] = None if op.reply is not None else int(row["failures"])
                    continue
                group = row["shard_group"]
                out[i] = completion_refused(
                    op.fence, row["epoch"], op.request_id,
                    None if group is None else ShardId(group, row["shard"]),
                    bool(row["processed"]),
                ) or message_vanished(op.request_id, "completed")
            ops = later

    async def _set_one_state(self, conn: Any, op: StateOp) -> object:
        """One fenced compare-and-set, in one statement (a flush of a single write)."""
        fence = op.fence
        assert fence is not None
        row = await conn.fetchrow(self._sql.FENCED_SET_STATE, op.key, op.value,
                                  op.expected_version, fence.shard.group, fence.shard.id,
                                  fence.epoch)
        if row["epoch"] != fence.epoch:
            return fenced_out(fence, row["epoch"])
        if row["version"] is not None:
            return int(row["version"])
        current = await conn.fetchval(self._sql.STATE_VERSION, op.key)
        return version_conflict(op.key, op.expected_version, current)

    async def _set_states(
        self, conn: Any, ops: list[tuple[int, StateOp]], out: list[object]
    ) -> None:
        shards = sorted({op.fence.shard for _, op in ops if op.fence is not None})
        epochs: dict[ShardId, int] = {}
        if shards:
            rows = await conn.fetch(
                self._sql.EPOCHS, [s.group for s in shards], [s.id for s in shards])
            epochs = {ShardId(r[0], r[1]): r[2] for r in rows}
        passed: list[tuple[int, StateOp]] = []
        for i, op in ops:
            if op.fence is not None and epochs.get(op.fence.shard) != op.fence.epoch:
                out[i] = fenced_out(op.fence, epochs.get(op.fence.shard))
            else:
                passed.append((i, op))
        if len({op.key for _, op in passed}) < len(passed):
            for i, op in passed:  # one key twice: one after the other, in order
                out[i] = await write_state(conn, self._sql, op)
            return
        # every compare-and-set in one statement (a group commit of many writes)
        rows = await conn.fetch(self._sql.SET_STATES_VERSIONS, [op.key for _, op in passed],
                                [op.value for _, op in passed],
                                [op.expected_version for _, op in passed])
        written = {r["key"]: int(r["version"]) for r in rows}
        missing = [op.key for _, op in passed if op.key not in written]
        current: dict[str, int] = {}
        if missing:
            current = {r["key"]: int(r["version"]) for r in await conn.fetch(
                self._sql.STATE_VERSIONS, missing)}
        for i, op in passed:
            version = written.get(op.key)
            out[i] = version if version is not None else version_conflict(
                op.key, op.expected_version, current.get(op.key))


    async def _commit_units(
        self, conn: Any, units: list[tuple[int, UnitOp]], out: list[object]
    ) -> None:
        """Commit ``units`` in one transaction; if one of them is refused after the
        others wrote (a failing statement, a state conflict, a deadlock), each in a
        transaction of its own. Only a lost connection fails them all."""
        if len(units) > 1:
            try:
                async with conn.transaction():
                    await self._shared(conn, units, out)
                return
            except Exception as exc:
                if is_unavailable(exc):
                    raise
        for i, op in units:
            out[i] = await self._alone(conn, op)

    async def _shared(
        self, conn: Any, units: list[tuple[int, UnitOp]], out: list[object]
    ) -> None:
        refused: list[object] = [None] * len(units)
        await self.complete(conn, [(k, CompleteOp(op.reply.request_id, op.fence,
                                                  reply=op.reply))
                                   for k, (_, op) in enumerate(units)], refused)
        passed = []
        for (i, op), refusal in zip(units, refused, strict=True):
            out[i] = refusal
            if refusal is None:
                passed.append(op)
        await run_staged_together(conn, [op.staged for op in passed])
        states = [w for op in passed for w in op.states]
        if states:
            written = await conn.fetch(
                self._sql.SET_STATES, [w.key for w in states], [w.value for w in states],
                [w.expected_version for w in states])
            if len(written) != len(states):
                raise _Split("a state compare-and-set failed")
        sent = [(k, SaveOp(op.sent)) for k, op in enumerate(passed) if op.sent]
        if sent:
            saved: list[object] = [None] * len(passed)
            await self.save(conn, sent, saved)
            if any(isinstance(result, BaseException) for result in saved):
                raise _Split("an outgoing message was refused")
            await self.notify(conn, [m for op in passed for m in op.sent])
        await insert_events(conn, self._sql, [e for op in passed for e in op.events])
        # last: a stream's head stays locked until COMMIT (its appenders queue on it)
        await self._append_streams(conn, [e for op in passed for e in op.streams])
        if not conn.is_in_transaction():
            raise _Split("a staged statement ended the transaction")

    async def _alone(self, conn: Any, op: UnitOp) -> object:
        """Commit one unit in its own transaction: ``None``, or why it was refused."""
        tx = conn.transaction()
        await tx.start()
        try:
            outcome: object = await self.write_unit(conn, op, staged_ran=False)
        except Exception as exc:
            await tx.rollback()
            if is_unavailable(exc):
                raise
            return translate(exc, "committing a unit of work")
        except BaseException:
            await tx.rollback()
            raise
        if outcome is None:
            await tx.commit()
        else:
            await tx.rollback()
        return outcome

    async def write_unit(self, conn: Any, op: UnitOp, *, staged_ran: bool) -> object:
        """Write ``op`` in the transaction open on ``conn``: ``None``, or why it is
        refused (the caller rolls back). ``staged_ran``: its statements ran already."""
        if not conn.is_in_transaction():
            # COMMIT or ROLLBACK sent by the application on its live connection:
            # covey's writes would run outside any transaction, so none may run.
            return app_write_failed(None, "the application ended covey's transaction")
        out: list[object] = [None]
        await self.complete(
            conn, [(0, CompleteOp(op.reply.request_id, op.fence, reply=op.reply))], out)
        if out[0] is not None:
            return out[0]
        if not staged_ran:
            try:
                await run_staged(conn, op.staged)
            except StatementFailed as exc:
                return app_write_failed(exc.sql, exc.error)
        for write in op.states:
            outcome = await write_state(conn, self._sql, StateOp(
                write.key, write.value, write.expected_version, op.fence))
            if isinstance(outcome, BaseException):
                return outcome
        if op.sent:
            await self.save(conn, [(0, SaveOp(op.sent))], out)
            if isinstance(out[0], BaseException):
                return out[0]
            await self.notify(conn, op.sent)
        await insert_events(conn, self._sql, op.events)
        await self._append_streams(conn, op.streams)
        return None

    async def _append_streams(self, conn: Any, entries: Sequence[StreamEntry]) -> None:
        """Append the units' stream items (in unit order) at the commit time."""
        if entries:
            await store_in(conn, self._streams, list(entries), self._clock.now())

    async def notify(self, conn: Any, sent: Sequence[Message]) -> None:
        """Wake the owners of ``sent``'s shards when the transaction commits."""
        shards = sorted({str(m.address.shard) for m in sent})
        await conn.execute(self._sql.NOTIFY, self._channel, shards)


async def insert_events(conn: Any, sql: Statements, events: Sequence[EventRecord]) -> None:
    """Store ``events`` in the open transaction (or alone); a stored id is kept."""
    if events:
        rows = [event_params(e) for e in {e.id: e for e in reversed(events)}.values()]
        await conn.execute(sql.INSERT_EVENTS, *(list(column) for column in zip(*rows,
                                                                                strict=True)))


async def write_state(conn: Any, sql: Statements, op: StateOp) -> int | VersionConflict:
    """The compare-and-set of ``op`` (its fence checked already): the new version,
    or the conflict as a value. ``conn`` is a connection or the pool."""
    if op.expected_version is None:
        version = await conn.fetchval(sql.CREATE_STATE, op.key, op.value)
    else:
        version = await conn.fetchval(sql.UPDATE_STATE, op.key, op.value, op.expected_version)
    if version is not None:
        return int(version)
    current = await conn.fetchval(sql.STATE_VERSION, op.key)
    return version_conflict(op.key, op.expected_version, current)
