"""The group-commit flush shared by messages and the state store.

Requests, replies and fenced state writes that arrive together are written by one
flush: one pooled connection, one transaction, set-based statements. Each op's
failure (fenced, not found, duplicate reply, version conflict) is decided before
anything is written, so a refused op changes nothing while the others commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from covey.core import (
    AlreadyProcessed,
    Clock,
    FencedOut,
    MessageNotFound,
    StorageError,
    VersionConflict,
)
from covey.storage._model import Duplicate, Fence, Message, Reply, Saved, SaveResult, encode_headers
from covey.storage.postgres._errors import CONNECTION_ERRORS, translate


@dataclass(frozen=True, slots=True)
class SaveOp:
    """Store these messages atomically (one ``save_request`` or ``save_requests``)."""

    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class ReplyOp:
    """Complete one request, if ``fence`` is current."""

    reply: Reply
    fence: Fence


@dataclass(frozen=True, slots=True)
class StateOp:
    """A compare-and-set of one state key, optionally fenced."""

    key: str
    value: bytes
    expected_version: int | None
    fence: Fence | None


Op = SaveOp | ReplyOp | StateOp


class Writer:
    """Runs one batch of ops in one transaction (the ``GroupCommit`` flush)."""

    def __init__(self, pool: Any, schema: str, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock
        s = schema
        self._insert = (
            f"INSERT INTO {s}.messages (id, entity_type, entity_id, shard_group, shard, tag,"
            " payload, headers, primary_key, dedupe_key, deliver_at, priority, created_at)"
            " SELECT t.*, $13::float8 FROM unnest($1::int8[], $2::text[], $3::text[],"
            " $4::text[], $5::int4[], $6::text[], $7::bytea[], $8::text[], $9::text[],"
            " $10::text[], $11::float8[], $12::int2[]) AS t"
            # Both a repeated id and a repeated dedupe key make a Duplicate.
            " ON CONFLICT DO NOTHING RETURNING id"
        )
        self._originals = (
            f"SELECT dedupe_key, id, processed, reply, reply_is_error FROM {s}.messages"
            " WHERE id = ANY($1::int8[]) OR dedupe_key = ANY($2::text[])"
        )
        # FOR SHARE: an acquisition bumping one of these epochs waits until this
        # transaction ends, so a completion commits before the new epoch or fails.
        self._epochs = (
            f"SELECT s.shard_group, s.shard, s.epoch FROM {s}.shards AS s"
            " JOIN unnest($1::text[], $2::int4[]) AS t(g, n) ON s.shard_group = t.g"
            " AND s.shard = t.n ORDER BY s.shard_group, s.shard FOR SHARE OF s"
        )
        # ORDER BY before FOR UPDATE: concurrent flushes lock rows in one order.
        self._targets = (
            f"SELECT id, shard_group, shard, processed FROM {s}.messages"
            " WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE"
        )
        self._complete = (
            f"UPDATE {s}.messages AS m SET processed = true, processed_at = $4,"
            " reply = t.reply, reply_is_error = t.is_error, lease_until = NULL"
            " FROM unnest($1::int8[], $2::bytea[], $3::bool[]) AS t(id, reply, is_error)"
            " WHERE m.id = t.id"
        )
        # All replies of a batch in ONE autocommit statement: the same fence
        # check (FOR SHARE), row locks and update as the transaction path below,
        # minus BEGIN/COMMIT and two round trips. Each op's outcome is derived
        # from what the statement saw, so refused ops change nothing.
        self._complete_all = (
            "WITH input AS (SELECT * FROM unnest($1::int8[], $2::bytea[], $3::bool[],"
            " $4::text[], $5::int4[], $6::int8[]) WITH ORDINALITY"
            " AS t(id, reply, is_error, g, n, epoch, ord)),"
            f" fence AS (SELECT s.shard_group, s.shard, s.epoch FROM {s}.shards AS s"
            " WHERE (s.shard_group, s.shard) IN (SELECT g, n FROM input)"
            " ORDER BY s.shard_group, s.shard FOR SHARE),"
            f" target AS (SELECT m.id, m.shard_group, m.shard, m.processed FROM {s}.messages"
            " AS m WHERE m.id IN (SELECT id FROM input) ORDER BY m.id FOR UPDATE),"
            f" done AS (UPDATE {s}.messages AS m SET processed = true, processed_at = $7,"
            " reply = i.reply, reply_is_error = i.is_error, lease_until = NULL"
            " FROM input AS i"
            " JOIN fence AS f ON f.shard_group = i.g AND f.shard = i.n AND f.epoch = i.epoch"
            " JOIN target AS t ON t.id = i.id AND t.shard_group = i.g AND t.shard = i.n"
            " AND NOT t.processed WHERE m.id = i.id RETURNING m.id)"
            " SELECT i.ord, f.epoch, t.id IS NOT NULL AS found, t.shard_group, t.shard,"
            " t.processed, EXISTS (SELECT 1 FROM done WHERE done.id = i.id) AS completed"
            " FROM input AS i LEFT JOIN fence AS f ON f.shard_group = i.g AND f.shard = i.n"
            " LEFT JOIN target AS t ON t.id = i.id ORDER BY i.ord"
        )
        self._state_insert = (
            f"INSERT INTO {s}.state (key, value, version) VALUES ($1, $2, 1)"
            " ON CONFLICT (key) DO NOTHING RETURNING version"
        )
        self._state_update = (
            f"UPDATE {s}.state SET value = $2, version = version + 1"
            " WHERE key = $1 AND version = $3 RETURNING version"
        )

    async def flush(self, ops: Sequence[Op]) -> list[object]:
        """One outcome per op: its result or the exception for that op alone."""
        out: list[object] = [None] * len(ops)
        saves = [(i, op) for i, op in enumerate(ops) if isinstance(op, SaveOp)]
        fenced = [(i, op) for i, op in enumerate(ops) if not isinstance(op, SaveOp)]
        replies = [(i, op) for i, op in fenced if isinstance(op, ReplyOp)]
        # Ops are independent of each other: each statement below is atomic by
        # itself, so without state writes no BEGIN/COMMIT round trips are needed.
        autocommit = len(replies) == len(fenced) and len(
            {op.reply.request_id for _, op in replies}
        ) == len(replies)
        try:
            async with self._pool.acquire() as conn:
                if autocommit:
                    if saves:
                        await self._save(conn, saves, out)
                    if replies:
                        await self._complete_batch(conn, replies, out)
                else:
                    async with conn.transaction():
                        if saves:
                            await self._save(conn, saves, out)
                        await self._fenced(conn, fenced, out)
        except CONNECTION_ERRORS as exc:
            raise translate(exc, "group commit") from exc
        except asyncpg.PostgresError as exc:
            # Re-raised as is unless this is a single op: GroupCommit then splits
            # the batch and the op at fault fails alone with a covey error.
            if len(ops) == 1:
                raise translate(exc, "write") from exc
            raise
        return out

    async def _save(
        self, conn: Any, saves: list[tuple[int, SaveOp]], out: list[object]
    ) -> None:
        now = self._clock.now()
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
            self._insert,
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
            now,
        )
        inserted = {r[0] for r in records}
        conflicts = [m for m in rows if m.id not in inserted]
        found_id: dict[int, Duplicate] = {}
        found_key: dict[str, Duplicate] = {}
        if conflicts:
            keys = [m.dedupe_key for m in conflicts if m.dedupe_key is not None]
            for r in await conn.fetch(self._originals, [m.id for m in conflicts], keys):
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
        for i, _ in saves:
            final: list[SaveResult] = []
            for j in refs[i]:
                result = outcome[~j] if j < 0 else outcome[j]
                if result is None:
                    final = []
                    break
                if j < 0 and isinstance(result, Saved):
                    result = Duplicate(result.id, None)
                final.append(result)
            out[i] = final if final else StorageError("a conflicting message vanished; retry")

    async def _complete_batch(
        self, conn: Any, replies: list[tuple[int, ReplyOp]], out: list[object]
    ) -> None:
        rows = await conn.fetch(
            self._complete_all,
            [op.reply.request_id for _, op in replies],
            [op.reply.payload for _, op in replies],
            [op.reply.is_error for _, op in replies],
            [op.fence.shard.group for _, op in replies],
            [op.fence.shard.id for _, op in replies],
            [op.fence.epoch for _, op in replies],
            self._clock.now(),
        )
        for (i, op), row in zip(replies, rows, strict=True):
            rid, fence = op.reply.request_id, op.fence
            if row["completed"]:
                out[i] = None
            elif row["epoch"] != fence.epoch:
                out[i] = _stale(fence, row["epoch"])
            elif not row["found"]:
                out[i] = MessageNotFound(f"no stored request has id {rid}", request_id=rid)
            elif (row["shard_group"], row["shard"]) != (fence.shard.group, fence.shard.id):
                out[i] = _elsewhere(rid, fence, row["shard_group"], row["shard"])
            else:
                out[i] = AlreadyProcessed(f"request {rid} has a reply already", request_id=rid)

    async def _fenced(
        self, conn: Any, ops: list[tuple[int, ReplyOp | StateOp]], out: list[object]
    ) -> None:
        shards = sorted({op.fence.shard for _, op in ops if op.fence is not None})
        epochs: dict[tuple[str, int], int] = {}
        if shards:
            rows = await conn.fetch(
                self._epochs, [s.group for s in shards], [s.id for s in shards]
            )
            epochs = {(r[0], r[1]): r[2] for r in rows}

        def stale(fence: Fence) -> FencedOut | None:
            current = epochs.get((fence.shard.group, fence.shard.id))
            return None if current == fence.epoch else _stale(fence, current)

        replies = [(i, op) for i, op in ops if isinstance(op, ReplyOp)]
        if replies:
            ids = sorted({op.reply.request_id for _, op in replies})
            targets = {r[0]: r for r in await conn.fetch(self._targets, ids)}
            done: set[int] = set()
            upd_ids: list[int] = []
            upd_payloads: list[bytes] = []
            upd_errors: list[bool] = []
            for i, op in replies:
                rid = op.reply.request_id
                row = targets.get(rid)
                fenced = stale(op.fence)
                if fenced is not None:
                    out[i] = fenced
                elif row is None:
                    out[i] = MessageNotFound(f"no stored request has id {rid}", request_id=rid)
                elif (row[1], row[2]) != (op.fence.shard.group, op.fence.shard.id):
                    out[i] = _elsewhere(rid, op.fence, row[1], row[2])
                elif row[3] or rid in done:
                    out[i] = AlreadyProcessed(
                        f"request {rid} has a reply already", request_id=rid
                    )
                else:
                    done.add(rid)
                    upd_ids.append(rid)
                    upd_payloads.append(op.reply.payload)
                    upd_errors.append(op.reply.is_error)
            if upd_ids:
                await conn.execute(
                    self._complete, upd_ids, upd_payloads, upd_errors, self._clock.now()
                )
        for i, any_op in ops:
            if not isinstance(any_op, StateOp):
                continue
            op_s = any_op
            if op_s.fence is not None and (fenced := stale(op_s.fence)) is not None:
                out[i] = fenced
                continue
            if op_s.expected_version is None:
                version = await conn.fetchval(self._state_insert, op_s.key, op_s.value)
            else:
                version = await conn.fetchval(
                    self._state_update, op_s.key, op_s.value, op_s.expected_version
                )
            out[i] = (
                int(version)
                if version is not None
                else VersionConflict(
                    f"state key {op_s.key!r} is not at version {op_s.expected_version}",
                    key=op_s.key,
                    expected_version=op_s.expected_version,
                )
            )


def _stale(fence: Fence, current: int | None) -> FencedOut:
    return FencedOut(
        f"shard {fence.shard} is at epoch {current}, not {fence.epoch}: "
        "another runner owns it now",
        shard=str(fence.shard),
        epoch=fence.epoch,
        current_epoch=current,
    )


def _elsewhere(request_id: int, fence: Fence, group: str, shard: int) -> FencedOut:
    return FencedOut(
        f"request {request_id} lives in shard {group}:{shard}, "
        f"not in the fenced shard {fence.shard}",
        shard=str(fence.shard),
        request_id=request_id,
    )
