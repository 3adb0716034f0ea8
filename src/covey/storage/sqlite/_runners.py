"""Runner membership and shard leases with fencing epochs on SQLite."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from covey.core import MAX_MACHINE_ID, Clock, RunnerAddress, ShardId, StorageOptions
from covey.storage._checked import CheckedRunnerStorage
from covey.storage._errors import corrupt_runner, machine_ids_exhausted
from covey.storage._model import MACHINE_ID_EXPIRY, RunnerInfo
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import SqliteDatabase, changed


def current_epoch(conn: sqlite3.Connection, shard: ShardId) -> int | None:
    """The shard's epoch (``None``: never acquired), for a fenced write.

    Read inside the write's own ``BEGIN IMMEDIATE`` transaction, so no
    acquisition can slip in between the check and the write.
    """
    row = conn.execute(q.SHARD_EPOCH, (shard.group, shard.id)).fetchone()
    return None if row is None else int(row[0])


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
        raise corrupt_runner(address, str(exc)) from exc


class SqliteRunnerStorage(CheckedRunnerStorage):
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

    async def _register(self, address: RunnerAddress, groups: tuple[str, ...],
                        weight: int) -> int:
        key, groups_json, now = str(address), json.dumps(list(groups)), self._clock.now()

        def run(conn: sqlite3.Connection) -> int:
            conn.execute(q.DELETE_EXPIRED_RUNNERS, (now - MACHINE_ID_EXPIRY, key))
            row = conn.execute(q.RUNNER_MACHINE_ID, (key,)).fetchone()
            if row is not None:
                conn.execute(q.UPDATE_RUNNER, (groups_json, weight, now, key))
                return int(row[0])
            (machine_id,) = conn.execute(q.FREE_MACHINE_ID, (MAX_MACHINE_ID,)).fetchone()
            if machine_id is None:
                raise machine_ids_exhausted()
            conn.execute(q.INSERT_RUNNER, (key, machine_id, groups_json, weight, now, now))
            return int(machine_id)

        return await self._db.write(run)

    async def _heartbeat(self, address: RunnerAddress) -> bool:
        params = (self._clock.now(), str(address))
        return await self._db.write(lambda conn: changed(conn, q.HEARTBEAT, params) > 0)

    async def _live_runners(self, max_age: float) -> list[RunnerInfo]:
        cutoff = self._clock.now() - max_age

        def run(conn: sqlite3.Connection) -> list[RunnerInfo]:
            rows = conn.execute(q.LIVE_RUNNERS, (cutoff,)).fetchall()
            # by RunnerAddress order (host, then port as a number), not text order
            return sorted((_runner(row) for row in rows), key=lambda r: r.address)

        return await self._db.read(run)

    async def _unregister(self, address: RunnerAddress) -> None:
        await self._db.write(lambda conn: conn.execute(q.DELETE_RUNNER, (str(address),)))

    async def _expire(self, address: RunnerAddress) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(q.DELETE_RUNNER, (str(address),))
            conn.execute(q.RELEASE_ALL, (str(address),))

        await self._db.write(run)

    async def _acquire(self, address: RunnerAddress, shards: list[ShardId]) -> dict[ShardId, int]:
        if not shards:
            return {}  # leases need no session to open
        owner, now = str(address), self._clock.now()
        until = now + self._options.shard_lease

        def run(conn: sqlite3.Connection) -> dict[ShardId, int]:
            held: dict[ShardId, int] = {}
            for shard in shards:
                conn.execute(q.INSERT_SHARD, (shard.group, shard.id))
                epoch, current, lease_until = conn.execute(
                    q.SHARD_LEASE, (shard.group, shard.id)).fetchone()
                if current == owner and lease_until > now:
                    pass  # ours already: same epoch, longer lease
                elif current is None or lease_until <= now:
                    epoch += 1
                else:
                    continue  # another live owner
                conn.execute(q.TAKE_SHARD, (epoch, owner, until, shard.group, shard.id, now))
                held[shard] = epoch
            return held

        return await self._db.write(run)

    async def _refresh(self, address: RunnerAddress, shards: list[ShardId]) -> set[ShardId]:
        if not shards:
            return set()
        owner, now = str(address), self._clock.now()
        until = now + self._options.shard_lease

        def run(conn: sqlite3.Connection) -> set[ShardId]:
            return {shard for shard in shards if changed(
                conn, q.REFRESH_SHARD, (until, shard.group, shard.id, owner, now))}

        return await self._db.write(run)

    async def _release(self, address: RunnerAddress, shards: list[ShardId]) -> None:
        if not shards:
            return
        owner = str(address)

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(q.RELEASE_SHARD, [(s.group, s.id, owner) for s in shards])

        await self._db.write(run)

    async def _release_all(self, address: RunnerAddress) -> None:
        await self._db.write(lambda conn: conn.execute(q.RELEASE_ALL, (str(address),)))
