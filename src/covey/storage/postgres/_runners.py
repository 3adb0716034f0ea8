"""Runner membership and advisory-lock shard ownership on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from covey.core import MAX_MACHINE_ID, Clock, RunnerAddress, ShardId, StorageOptions
from covey.core.runtime import stable_hash
from covey.storage._checked import CheckedRunnerStorage
from covey.storage._errors import corrupt_runner, machine_ids_exhausted
from covey.storage._model import MACHINE_ID_EXPIRY, RunnerInfo
from covey.storage.postgres._errors import CONNECTION_ERRORS, translate, translated
from covey.storage.postgres._queries import Statements
from covey.storage.postgres._sessions import KEEPALIVE_SETTINGS, client_keepalive, session_name

T = TypeVar("T")

log = logging.getLogger("covey.storage")


def int32(value: int) -> int:
    """The low 32 bits of ``value`` as a signed int (an advisory-lock key half)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def int64(value: int) -> int:
    """The low 64 bits of ``value`` as a signed bigint."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= (1 << 63) else value


@dataclass
class _LockSession:
    """One runner's dedicated lock connection and the shards locked on it."""

    conn: Any = None
    held: dict[ShardId, int] = field(default_factory=dict)
    mutex: asyncio.Lock = field(default_factory=asyncio.Lock)


class PostgresRunnerStorage(CheckedRunnerStorage):
    """:class:`covey.storage.RunnerStorage` on PostgreSQL.

    Shards are session advisory locks on one dedicated connection per runner: a
    dead pod's locks vanish with its connection. TCP keepalives on that
    connection let the server notice a vanished host within seconds. Every lock
    operation is bounded by ``options.lock_timeout``; a connection that fails or
    hangs is terminated and everything it held counts as lost.

    A runner whose lock session is gone is no longer live at once (fast
    failover). It is removed, as peers expire silent runners on the other
    backends, once its heartbeat is older than ``runner_ttl`` and this process
    has seen it without a session for ``runner_ttl`` too: a crashed pod leaves no
    row behind and its machine id is free again, while runners that were only
    cut off together (a database restart) beat again in time and keep theirs.

    Args:
        pool: the asyncpg pool (membership rows).
        url: the database URL (lock connections are opened outside the pool).
        schema: the unquoted schema name (namespaces the lock keys).
        sql: the statements of the schema.
        options: storage options.
        clock: the source of heartbeat times.
        runner_ttl: how old the heartbeat of a runner without a lock session must
            be before its row is removed (the runners' ``runner_ttl``).

    Attributes:
        named: the runner this process registered first; its sessions are named
            after it (``None`` until then).
    """

    def __init__(
        self, pool: Any, url: str, schema: str, sql: Statements, options: StorageOptions,
        clock: Clock, *, runner_ttl: float,
    ) -> None:
        self._pool = pool
        self._url = url
        self._schema = schema
        self._options = options
        self._clock = clock
        self._runner_ttl = runner_ttl
        self._gone_since: dict[str, float] = {}
        self.named: str | None = None
        #: called once ``named`` is set (the storage renames its open sessions)
        self.on_named: Callable[[], None] | None = None
        self._sessions: dict[RunnerAddress, _LockSession] = {}
        self._keys: dict[str, int] = {}
        self._sql = sql
        self._register_lock = int64(stable_hash(f"covey:{schema}:register"))

    # -- membership -----------------------------------------------------------

    async def _register(self, address: RunnerAddress, groups: tuple[str, ...],
                        weight: int) -> int:
        if self.named is None:
            self.named = str(address)
            if self.on_named is not None:
                self.on_named()
        now = self._clock.now()
        with translated("registering a runner"):
            async with self._pool.acquire() as conn, conn.transaction():
                # Serializes registrations so two runners never pick the same id.
                await conn.execute(self._sql.XACT_LOCK, self._register_lock)
                await conn.execute(self._sql.DELETE_EXPIRED_RUNNERS, now - MACHINE_ID_EXPIRY)
                machine_id = await conn.fetchval(self._sql.RUNNER_MACHINE_ID, str(address))
                if machine_id is None:
                    machine_id = await conn.fetchval(self._sql.FREE_MACHINE_ID, MAX_MACHINE_ID)
                if machine_id is None:
                    raise machine_ids_exhausted()
                await conn.execute(
                    self._sql.UPSERT_RUNNER, str(address), machine_id, list(groups), weight, now
                )
                session = self._sessions.get(address)
                if session is not None and session.conn is not None \
                        and not session.conn.is_closed():
                    # re-registered after a peer expired us: our lock session lives on
                    await conn.execute(self._sql.SET_LOCK_SESSION, str(address),
                                       session.conn.get_server_pid())
        return int(machine_id)

    async def _heartbeat(self, address: RunnerAddress) -> bool:
        with translated("heartbeat"):
            status = await self._pool.execute(
                self._sql.HEARTBEAT, str(address), self._clock.now()
            )
        return bool(status != "UPDATE 0")

    async def _live_runners(self, max_age: float) -> list[RunnerInfo]:
        now = self._clock.now()
        with translated("listing runners"):
            rows = await self._pool.fetch(self._sql.LIVE_RUNNERS, now - max_age)
            expired = self._expired([r for r in rows if r["gone"]], now)
            if expired:
                await self._remove_gone(expired, now)
        runners = [_runner(r) for r in rows
                   if not r["gone"] and r["last_heartbeat"] >= now - max_age]
        runners.sort(key=lambda r: r.address)
        return runners

    def _expired(self, gone: list[Any], now: float) -> list[str]:
        """The sessionless runners to remove now (see the class docstring)."""
        seen = {r["address"] for r in gone}
        for address in [a for a in self._gone_since if a not in seen]:
            del self._gone_since[address]  # back, or removed by someone
        cutoff = now - self._runner_ttl
        expired = []
        for row in gone:
            since = self._gone_since.setdefault(row["address"], now)
            if since <= cutoff and row["last_heartbeat"] < cutoff and row["address"] != self.named:
                expired.append(row["address"])
        return expired

    async def _remove_gone(self, addresses: list[str], now: float) -> None:
        removed = await self._pool.fetch(
            self._sql.REMOVE_GONE_RUNNERS, addresses, now - self._runner_ttl)
        for row in removed:
            log.warning("runner %s has no database session and missed heartbeats for "
                        "%.1f s; removed it", row["address"], now - row["last_heartbeat"])

    async def _unregister(self, address: RunnerAddress) -> None:
        with translated("unregistering a runner"):
            await self._pool.execute(self._sql.DELETE_RUNNER, str(address))

    async def _expire(self, address: RunnerAddress) -> None:
        # Only the membership row: an advisory lock ends with its session, so a
        # dead runner's shards free up when the server drops its connection
        # (keepalives), and fencing refuses its writes if it was only paused.
        with translated("expiring a runner"):
            await self._pool.execute(self._sql.DELETE_RUNNER, str(address))

    # -- shard locks ----------------------------------------------------------

    def _key(self, group: str) -> int:
        key = self._keys.get(group)
        if key is None:
            key = self._keys[group] = int32(stable_hash(f"covey:{self._schema}:{group}"))
        return key

    async def _connection(self, session: _LockSession, address: RunnerAddress) -> Any:
        if session.conn is not None and not session.conn.is_closed():
            return session.conn
        session.held.clear()  # a new connection holds nothing
        conn = await asyncpg.connect(
            self._url,
            timeout=self._options.connect_timeout,
            statement_cache_size=16,
            server_settings={
                **KEEPALIVE_SETTINGS, "application_name": session_name("lock", str(address)),
            },
        )
        client_keepalive(conn)
        # record the session so peers can tell when it (and so this runner) is gone
        await conn.execute(self._sql.RECORD_LOCK_SESSION, str(address))
        session.conn = conn
        return conn

    def _drop(self, session: _LockSession) -> None:
        if session.conn is not None:
            session.conn.terminate()
        session.conn = None
        session.held.clear()

    async def _bounded(
        self, session: _LockSession, what: str, op: Callable[[], Awaitable[T]], lost: T
    ) -> T:
        """Run ``op`` under the lock timeout; a hung or broken connection is lost."""
        try:
            return await asyncio.wait_for(op(), self._options.lock_timeout)
        except CONNECTION_ERRORS:
            self._drop(session)
            return lost
        except BaseException as exc:
            # Unknown state (cancelled mid-statement, SQL error): locks may be held
            # that the held set does not know about; only closing is safe.
            self._drop(session)
            raise translate(exc, what) from exc

    async def _acquire(self, address: RunnerAddress, shards: list[ShardId]) -> dict[ShardId, int]:
        session = self._sessions.setdefault(address, _LockSession())

        async def op() -> dict[ShardId, int]:
            conn = await self._connection(session, address)
            new = [s for s in shards if s not in session.held]
            if new:
                rows = await conn.fetch(
                    self._sql.TRY_LOCKS, [self._key(s.group) for s in new], [s.id for s in new]
                )
                got = [new[r[0] - 1] for r in rows]
                if got:
                    bumped = await conn.fetch(self._sql.BUMP_EPOCHS, [s.group for s in got],
                                              [s.id for s in got], str(address),
                                              self._clock.now())
                    for r in bumped:
                        session.held[ShardId(r[0], r[1])] = int(r[2])
            return {s: session.held[s] for s in shards if s in session.held}

        async with session.mutex:
            return await self._bounded(session, "acquiring shards", op, {})

    async def _refresh(self, address: RunnerAddress, shards: list[ShardId]) -> set[ShardId]:
        session = self._sessions.get(address)
        if session is None:
            return set()

        async def op() -> set[ShardId]:
            conn = session.conn
            if conn is None or conn.is_closed():
                self._drop(session)
                return set()
            locked = {(r[0], r[1]) for r in await conn.fetch(self._sql.HELD_LOCKS)}
            for shard in list(session.held):
                if (self._key(shard.group) & 0xFFFFFFFF, shard.id) not in locked:
                    del session.held[shard]
            return {s for s in shards if s in session.held}

        async with session.mutex:
            return await self._bounded(session, "refreshing shards", op, set())

    async def _release(self, address: RunnerAddress, shards: list[ShardId]) -> None:
        session = self._sessions.get(address)
        if session is None:
            return

        async def op() -> None:
            mine = [s for s in shards if s in session.held]
            if not mine or session.conn is None:
                return
            await session.conn.fetch(
                self._sql.UNLOCK, [self._key(s.group) for s in mine], [s.id for s in mine]
            )
            for s in mine:
                del session.held[s]

        async with session.mutex:
            await self._bounded(session, "releasing shards", op, None)

    async def _release_all(self, address: RunnerAddress) -> None:
        session = self._sessions.pop(address, None)
        if session is None:
            return
        async with session.mutex:
            await self._close_session(session)

    async def _close_session(self, session: _LockSession) -> None:
        conn, session.conn = session.conn, None
        session.held.clear()
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), self._options.lock_timeout)
        except asyncio.CancelledError:
            conn.terminate()
            raise
        except Exception:
            conn.terminate()  # closing is best effort: the locks go with the socket

    async def close(self) -> None:
        """Drop every lock connection (their locks vanish with them)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await self._close_session(session)



def _runner(row: Any) -> RunnerInfo:
    try:
        return RunnerInfo(
            address=RunnerAddress.parse(row["address"]),
            machine_id=int(row["machine_id"]),
            groups=tuple(row["groups"]),
            weight=int(row["weight"]),
            last_heartbeat=float(row["last_heartbeat"]),
        )
    except (ValueError, TypeError) as exc:
        raise corrupt_runner(row["address"], str(exc)) from exc
