"""Runner membership and shard leases with fencing epochs on SQLite."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import aiosqlite

from covey.core import (
    MAX_MACHINE_ID,
    Clock,
    FencedOut,
    Reason,
    RunnerAddress,
    ShardId,
    StorageError,
    StorageOptions,
)
from covey.storage._checks import (
    check_max_age,
    check_registration,
    check_runner_address,
    check_runner_shards,
)
from covey.storage._model import Fence, RunnerInfo
from covey.storage.sqlite._connection import SqliteDatabase, execute, fetchall, fetchone

#: A runner silent this long gives its machine id back on the next registration.
MACHINE_ID_EXPIRY = 300.0


async def check_fence(conn: aiosqlite.Connection, fence: Fence, shard: ShardId | None) -> None:
    """Refuse a completion write unless ``fence`` is the shard's current epoch.

    Runs inside the write's own transaction, so no acquisition can slip in
    between the check and the write. ``shard`` is where the written row lives
    (``None`` when the write is not tied to a row of a shard).

    Raises:
        FencedOut: the epoch moved on, or the row lives in another shard.
    """
    if shard is not None and shard != fence.shard:
        raise FencedOut(
            f"fence for shard {fence.shard} does not cover a write to shard {shard}",
            shard=str(fence.shard),
            epoch=fence.epoch,
        )
    row = await fetchone(
        conn,
        "SELECT epoch FROM covey_shards WHERE shard_group = ? AND shard = ?",
        (fence.shard.group, fence.shard.id),
    )
    if row is None or row[0] != fence.epoch:
        current = None if row is None else row[0]
        raise FencedOut(
            f"shard {fence.shard} is at epoch {current}, the write carried {fence.epoch}",
            shard=str(fence.shard),
            epoch=fence.epoch,
            current_epoch=current,
        )


def _runner(row: Any) -> RunnerInfo:
    address, machine_id, groups, weight, last_heartbeat = row
    try:
        parsed = json.loads(groups)
        if not isinstance(parsed, list) or not all(isinstance(g, str) for g in parsed):
            raise ValueError("groups is not a list of strings")
        return RunnerInfo(
            address=RunnerAddress.parse(address),
            machine_id=int(machine_id),
            groups=tuple(parsed),
            weight=int(weight),
            last_heartbeat=float(last_heartbeat),
        )
    except (ValueError, TypeError) as exc:
        raise StorageError(
            f"stored runner {address!r} is corrupt: {exc}",
            reason=Reason.STORAGE_CORRUPT,
            address=str(address),
        ) from exc


def _shard_params(shards: Collection[ShardId]) -> list[tuple[str, int]]:
    return sorted({(shard.group, shard.id) for shard in shards})


class SqliteRunnerStorage:
    """:class:`covey.storage.RunnerStorage` on SQLite: a lease table with expiry.

    A shard is held while its ``lease_until`` is in the future; every
    acquisition by a new owner bumps its ``epoch``, which fences the previous
    owner's writes.

    Args:
        db: the instance's connection.
        options: ``shard_lease`` is the lease length.
        clock: every stored time comes from it.
    """

    def __init__(self, db: SqliteDatabase, options: StorageOptions, clock: Clock) -> None:
        self._db = db
        self._options = options
        self._clock = clock

    async def register(
        self, address: RunnerAddress, *, groups: Sequence[str] = ("default",), weight: int = 1
    ) -> int:
        check_registration(address, groups, weight)
        key = str(address)
        groups_json = json.dumps(list(groups))

        async def run(conn: aiosqlite.Connection) -> int:
            now = self._clock.now()
            await execute(
                conn,
                "DELETE FROM covey_runners WHERE last_heartbeat < ? AND address <> ?",
                (now - MACHINE_ID_EXPIRY, key),
            )
            row = await fetchone(
                conn, "SELECT machine_id FROM covey_runners WHERE address = ?", (key,)
            )
            if row is not None:
                await execute(
                    conn,
                    "UPDATE covey_runners SET groups = ?, weight = ?, last_heartbeat = ? "
                    "WHERE address = ?",
                    (groups_json, weight, now, key),
                )
                return int(row[0])
            taken = {r[0] for r in await fetchall(conn, "SELECT machine_id FROM covey_runners")}
            machine_id = next((i for i in range(MAX_MACHINE_ID + 1) if i not in taken), None)
            if machine_id is None:
                raise StorageError(
                    f"all {MAX_MACHINE_ID + 1} machine ids are taken by registered runners"
                )
            await execute(
                conn,
                "INSERT INTO covey_runners "
                "(address, machine_id, groups, weight, registered_at, last_heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, machine_id, groups_json, weight, now, now),
            )
            return machine_id

        return await self._db.write(run)

    async def heartbeat(self, address: RunnerAddress) -> bool:
        check_runner_address(address)
        async def run(conn: aiosqlite.Connection) -> bool:
            changed = await execute(
                conn,
                "UPDATE covey_runners SET last_heartbeat = ? WHERE address = ?",
                (self._clock.now(), str(address)),
            )
            return changed > 0

        return await self._db.write(run)

    async def live_runners(self, max_age: float) -> list[RunnerInfo]:
        check_max_age(max_age)
        async def run(conn: aiosqlite.Connection) -> list[RunnerInfo]:
            rows = await fetchall(
                conn,
                "SELECT address, machine_id, groups, weight, last_heartbeat FROM covey_runners "
                "WHERE last_heartbeat >= ?",
                (self._clock.now() - max_age,),
            )
            # by RunnerAddress order (host, then port as a number), not text order
            return sorted((_runner(row) for row in rows), key=lambda r: r.address)

        return await self._db.read(run)

    async def unregister(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        async def run(conn: aiosqlite.Connection) -> None:
            await execute(conn, "DELETE FROM covey_runners WHERE address = ?", (str(address),))

        await self._db.write(run)

    async def acquire(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> dict[ShardId, int]:
        check_runner_shards(address, shards, serving=True)
        wanted = _shard_params(shards)
        owner = str(address)

        async def run(conn: aiosqlite.Connection) -> dict[ShardId, int]:
            now = self._clock.now()
            until = now + self._options.shard_lease
            held: dict[ShardId, int] = {}
            for group, shard in wanted:
                await execute(
                    conn,
                    "INSERT INTO covey_shards (shard_group, shard) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (group, shard),
                )
                row = await fetchone(
                    conn,
                    "SELECT epoch, owner, lease_until FROM covey_shards "
                    "WHERE shard_group = ? AND shard = ?",
                    (group, shard),
                )
                epoch, current, lease_until = row
                if current == owner and lease_until > now:
                    pass  # ours already: same epoch, longer lease
                elif current is None or lease_until <= now:
                    epoch += 1
                else:
                    continue  # another live owner
                await execute(
                    conn,
                    "UPDATE covey_shards SET epoch = ?, owner = ?, lease_until = ? "
                    "WHERE shard_group = ? AND shard = ?",
                    (epoch, owner, until, group, shard),
                )
                held[ShardId(group, shard)] = epoch
            return held

        if not wanted:
            return {}
        return await self._db.write(run)

    async def refresh(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> set[ShardId]:
        check_runner_shards(address, shards)
        wanted = _shard_params(shards)
        owner = str(address)

        async def run(conn: aiosqlite.Connection) -> set[ShardId]:
            now = self._clock.now()
            kept: set[ShardId] = set()
            for group, shard in wanted:
                changed = await execute(
                    conn,
                    "UPDATE covey_shards SET lease_until = ? WHERE shard_group = ? AND shard = ? "
                    "AND owner = ? AND lease_until > ?",
                    (now + self._options.shard_lease, group, shard, owner, now),
                )
                if changed:
                    kept.add(ShardId(group, shard))
            return kept

        if not wanted:
            return set()
        return await self._db.write(run)

    async def release(self, address: RunnerAddress, shards: Collection[ShardId]) -> None:
        check_runner_shards(address, shards)
        wanted = _shard_params(shards)

        async def run(conn: aiosqlite.Connection) -> None:
            for group, shard in wanted:
                await execute(
                    conn,
                    "UPDATE covey_shards SET owner = NULL, lease_until = 0 "
                    "WHERE shard_group = ? AND shard = ? AND owner = ?",
                    (group, shard, str(address)),
                )

        if wanted:
            await self._db.write(run)

    async def release_all(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        async def run(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "UPDATE covey_shards SET owner = NULL, lease_until = 0 WHERE owner = ?",
                (str(address),),
            )

        await self._db.write(run)

    async def expire(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        async def run(conn: aiosqlite.Connection) -> None:
            await execute(conn, "DELETE FROM covey_runners WHERE address = ?", (str(address),))
            await execute(
                conn,
                "UPDATE covey_shards SET owner = NULL, lease_until = 0 WHERE owner = ?",
                (str(address),),
            )

        await self._db.write(run)
