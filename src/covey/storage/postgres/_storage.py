"""PostgresStorage: the pool, migrations, the shard-count check and info."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from covey.core import (
    Clock,
    MigrationError,
    ShardId,
    ShardingOptions,
    StorageError,
    StorageOptions,
)
from covey.core.runtime import stable_hash
from covey.storage._base import InstallFrom, StorageLifecycle, check_shards, plan_migrations
from covey.storage._contracts import MessageStorage, RunnerStorage, StateStore
from covey.storage._errors import not_started
from covey.storage._events_contract import EventStore
from covey.storage._group_commit import GroupCommit
from covey.storage._inspection_contract import InspectionStore
from covey.storage._model import StorageInfo
from covey.storage._streams_contract import StreamStore
from covey.storage.postgres._errors import is_unavailable, translated
from covey.storage.postgres._events import PostgresEventStore
from covey.storage.postgres._inspection import PostgresInspectionStore
from covey.storage.postgres._messages import PostgresMessageStorage
from covey.storage.postgres._queries import Statements
from covey.storage.postgres._runners import PostgresRunnerStorage, int64
from covey.storage.postgres._sessions import session_name
from covey.storage.postgres._state import PostgresStateStore
from covey.storage.postgres._stream_queries import StreamStatements
from covey.storage.postgres._streams import PostgresStreamStore
from covey.storage.postgres._wakeups import PostgresWakeups
from covey.storage.postgres._writer import Op, Writer

_PACKAGE = "covey.storage.postgres"


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class PostgresStorage(StorageLifecycle):
    """The PostgreSQL backend: advisory-lock shard ownership and group commit.

    Args:
        url: a ``postgresql://`` URL.
        shards: shards per group; recorded on first start, checked afterwards.
        options: storage options (schema, pool size, batching, timeouts).
        clock: the source of every time written (the database's ``now()`` is
            never used, so every runner and test agrees on time).
        install_from: on an empty schema, apply ``schema.sql`` (``"schema"``) or
            replay every migration (``"migrations"``); both give the same schema.
        runner_ttl: the runners' ``runner_ttl``: a runner whose lock session is
            gone is removed once its heartbeat is this old.

    Attributes:
        runners: membership and shard locks.
        messages: persisted requests and replies.
        state: the versioned key-value store.
        events: the event log and its subscriber groups.
        streams: stream items, routes and mailboxes.
        inspection: bounded reads for operators (the dashboard).
    """

    backend = "postgres"

    def __init__(
        self,
        url: str,
        *,
        shards: int,
        options: StorageOptions,
        clock: Clock,
        install_from: InstallFrom = "schema",
        runner_ttl: float = ShardingOptions.runner_ttl,
    ) -> None:
        if not options.schema.isidentifier():
            raise StorageError(f"invalid schema name {options.schema!r}")
        self._url = url
        self._shards = shards
        self._options = options
        self._clock = clock
        self._install_from = install_from
        self._runner_ttl = runner_ttl
        self._sql = Statements(quote_ident(options.schema))
        self._pool: Any = None
        self._writer_pool: Any = None
        self._relaxed_pool: Any = None
        self._started = False
        self._version = 0
        self._writer: Writer | None = None
        self.batcher: GroupCommit[Op, object] | None = None
        #: the group commit of units of work: one flusher, so the units that finish
        #: while a shared transaction runs all join the next one (their
        #: transactions are several statements long; small ones cost more than
        #: they save), while the plain writes keep their flushers
        self.unit_batcher: GroupCommit[Op, object] | None = None
        #: the group commit of fenced state writes that need not wait for the WAL
        #: flush (``StateStore.set(sync=False)``: workflow checkpoints)
        self.relaxed_batcher: GroupCommit[Op, object] | None = None
        # Declared as the contract types: Storage's attributes are mutable, so a
        # protocol match needs exactly these types.
        self.runners: RunnerStorage
        self.messages: MessageStorage
        self.state: StateStore
        self.events: EventStore
        self.streams: StreamStore
        self.inspection: InspectionStore
        self._runners: PostgresRunnerStorage
        #: NOTIFY channel of this schema: transactional saves wake runners with it
        self.channel = f"covey_{options.schema}"[:63]
        self._wakeups = PostgresWakeups(
            url, self.channel, options, clock, lambda: self._session_name("listen"))
        self._build(_NotStarted())

    def _build(self, pool: Any, writer_pool: Any = None, relaxed_pool: Any = None) -> None:
        streams = StreamStatements(quote_ident(self._options.schema))
        self._writer = Writer(writer_pool or pool, self._sql, self._clock, self.channel,
                              streams=streams)
        relaxed = Writer(relaxed_pool or writer_pool or pool, self._sql, self._clock,
                         self.channel, streams=streams)
        self.relaxed_batcher = GroupCommit(
            relaxed.flush,
            max_size=self._options.batch_max_size,
            max_wait=self._options.batch_max_wait,
            flushers=1,
            is_fatal=is_unavailable,
        )
        self.batcher = GroupCommit(
            self._writer.flush,
            max_size=self._options.batch_max_size,
            max_wait=self._options.batch_max_wait,
            flushers=self._options.batch_flushers,
            is_fatal=is_unavailable,
        )
        self.unit_batcher = GroupCommit(
            self._writer.flush,
            max_size=self._options.batch_max_size,
            max_wait=self._options.batch_max_wait,
            flushers=1,
            is_fatal=is_unavailable,
        )
        self._runners = PostgresRunnerStorage(
            pool, self._url, self._options.schema, self._sql, self._options, self._clock,
            runner_ttl=self._runner_ttl,
        )
        self._runners.on_named = self._wakeups.recheck  # name the LISTEN session now
        self.runners = self._runners
        self.messages = PostgresMessageStorage(
            pool, self._sql, self._options, self._clock, self.batcher, self._writer, self.channel,
            units=self.unit_batcher,
        )
        self.state = PostgresStateStore(pool, self._sql, self.batcher, self.relaxed_batcher)
        self.events = PostgresEventStore(
            pool, (quote_ident(self._options.schema), self._options.schema), self.batcher,
            self._writer)
        self.streams = PostgresStreamStore(pool, quote_ident(self._options.schema))
        self.inspection = PostgresInspectionStore(pool, quote_ident(self._options.schema))
        if isinstance(pool, _NotStarted):
            # Flushers only run between start() and close(); a write before
            # start() must fail at once instead of queueing forever.
            self.batcher._closed = True
            self.unit_batcher._closed = True

    @property
    def location(self) -> str:
        """The server, database and schema, without credentials."""
        parts = urlsplit(self._url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{host}{port}{parts.path} (schema {self._options.schema})"

    async def start(self) -> None:
        if self._started:
            return
        with translated("connecting"):
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=max(1, self._options.pool_size),
                timeout=self._options.connect_timeout,
                reset=_no_reset,
                # Plan every execution with the current table size. asyncpg
                # prepares each statement; after five runs PostgreSQL may switch
                # to a generic plan made while the messages table was still small
                # (e.g. a seq scan) and keep it while the table grows, so reads
                # and completions get slower with every stored message.
                server_settings={
                    "plan_cache_mode": "force_custom_plan",
                    "application_name": self._session_name("pool"),
                },
                setup=self._namer("pool"),
            )
        try:
            await self._migrate()
            with translated("connecting"):
                self._writer_pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    # every flusher of both group commits at once, and one spare
                    max_size=self._options.batch_flushers + 2,
                    timeout=self._options.connect_timeout,
                    reset=_no_reset,
                    # Group commit's statements are all set-based writes by key
                    # (unnest of arrays): planning each execution again costs more
                    # than running it (~1 ms of the fenced completion's ~1.5 ms
                    # here), so they keep one generic plan; with sequential scans
                    # off that plan uses the indexes however small the tables were
                    # when it was made. The main pool keeps custom plans (reads,
                    # and the application's live transactions).
                    server_settings={
                        "plan_cache_mode": "force_generic_plan",
                        "enable_seqscan": "off",
                        "application_name": self._session_name("writer"),
                    },
                    setup=self._namer("writer"),
                )
                self._relaxed_pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,  # connects on its first write: most runners make none
                    max_size=2,  # its one flusher, and one spare
                    timeout=self._options.connect_timeout,
                    reset=_no_reset,
                    server_settings={
                        "plan_cache_mode": "force_generic_plan",
                        "enable_seqscan": "off",
                        # a commit here does not wait for its WAL flush: a crash of
                        # the server may lose the newest of these writes (never one
                        # that a later synchronous commit flushed)
                        "synchronous_commit": "off",
                        "application_name": self._session_name("writer"),
                    },
                    setup=self._namer("writer"),
                )
        except BaseException:
            for opened in (self._relaxed_pool, self._writer_pool):
                if opened is not None:
                    await opened.close()
            self._writer_pool = self._relaxed_pool = None
            await self._pool.close()
            self._pool = None
            raise
        self._build(self._pool, self._writer_pool, self._relaxed_pool)
        assert self.batcher is not None and self.unit_batcher is not None
        assert self.relaxed_batcher is not None
        self.batcher.start()
        self.unit_batcher.start()
        self.relaxed_batcher.start()
        self._started = True

    async def _migrate(self) -> None:
        sql = self._sql
        with translated("migrating"):
            async with self._pool.acquire() as conn, conn.transaction():
                # Several processes may start at once: one migrates, the others
                # wait here and then find the versions recorded.
                key = int64(stable_hash(f"covey:migrate:{self._options.schema}"))
                await conn.execute(sql.XACT_LOCK, key)
                await conn.execute(sql.CREATE_SCHEMA)
                await conn.execute(sql.BOOKKEEPING)
                plan = plan_migrations(_PACKAGE, await conn.fetchval(sql.SCHEMA_VERSION),
                                       self._install_from, f"schema {self._options.schema}")
                await conn.execute(sql.SEARCH_PATH)
                for name, script in plan.scripts:
                    await self._apply(conn, name, script)
                now = self._clock.now()
                await conn.executemany(sql.RECORD_MIGRATION, [(version, name, now)
                                                              for version, name in plan.applied])
                await conn.execute(sql.RECORD_SHARD_COUNT, str(self._shards))
                recorded = await conn.fetchval(sql.SHARD_COUNT)
                self._version = plan.version
        check_shards(int(recorded), self._shards, self.location)

    @staticmethod
    async def _apply(conn: Any, name: str, sql: str) -> None:
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            if is_unavailable(exc):
                raise
            raise MigrationError(f"migration {name} failed: {exc}", migration=name) from exc

    async def listen(self, callback: Callable[[ShardId | None], None]) -> None:
        """Call ``callback(shard)`` when another process's commit stored messages.

        One dedicated connection (with TCP keepalives) LISTENs on
        :attr:`channel`. A lost connection is reopened by itself, with backoff;
        wake-ups sent meanwhile are lost, so after reconnecting ``callback(None)``
        asks for every shard to be read (the runners' safety poll is the last
        resort). :attr:`wakeups_connected` and the gauge
        ``covey_wakeup_listener_up`` show whether it is up.

        Raises:
            StorageError: ``storage_unavailable`` if the first connect fails.
        """
        await self._wakeups.listen(callback)

    @property
    def wakeups_connected(self) -> bool:
        """Whether commit wake-ups arrive now (the LISTEN connection is up)."""
        return self._wakeups.connected

    def _session_name(self, role: str) -> str:
        return session_name(role, self._runners.named)

    def _namer(self, role: str) -> Callable[[Any], Awaitable[None]]:
        """Pool setup: name a pooled session after this runner once it is known
        (the pools open before the runner registers). A round trip only the first
        time a connection is used after that."""

        async def name_pooled(conn: Any) -> None:
            name = self._session_name(role)
            if conn.get_settings().application_name != name:
                await conn.execute("SELECT set_config('application_name', $1, false)", name)

        return name_pooled

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._wakeups.close()
        try:
            if self.unit_batcher is not None:
                await self.unit_batcher.close()
            if self.relaxed_batcher is not None:
                await self.relaxed_batcher.close()
            if self.batcher is not None:
                await self.batcher.close()
            await self._runners.close()
        finally:
            for pool in (self._relaxed_pool, self._writer_pool, self._pool):
                if pool is None:
                    continue
                try:
                    await pool.close()
                except Exception:
                    pool.terminate()
            self._pool = self._writer_pool = self._relaxed_pool = None

    async def ping(self) -> None:
        """One cheap round trip (``SELECT 1`` on a pooled connection), for health checks.

        Raises:
            StorageError: ``storage_unavailable`` when the database does not answer.
        """
        with translated("pinging"):
            await self._require_pool().fetchval("SELECT 1")

    async def info(self) -> StorageInfo:
        with translated("reading info"):
            row = await self._require_pool().fetchrow(self._sql.INFO)
        return StorageInfo(
            backend=self.backend,
            location=self.location,
            schema_version=self._version,
            shards=self._shards,
            runners=int(row["runners"]),
            messages_total=int(row["total"]),
            messages_unprocessed=int(row["unprocessed"]),
        )

    async def schema_fingerprint(self) -> str:
        """A sorted, normalized text of the schema's tables, columns, indexes and
        constraints; equal for a fresh install and a fully migrated schema."""
        name = self._options.schema
        with translated("reading the schema"):
            rows = await self._require_pool().fetch(
                self._sql.FINGERPRINT, name, f"{quote_ident(name)}.")
        lines = sorted(str(r[0]).replace(f"{name}.", "") for r in rows)
        return "\n".join(lines) + "\n"

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise not_started("PostgreSQL")
        return self._pool


async def _no_reset(conn: Any) -> None:
    """Skip asyncpg's reset query on release (a round trip per use): pooled
    connections never carry session state here (only ``SET LOCAL`` and
    transaction-scoped advisory locks), and the pool already rolls back an open
    transaction before calling this."""


class _NotStarted:
    """Stands in for the pool before ``start()``: every use is a clear error."""

    def __getattr__(self, name: str) -> Any:
        raise not_started("PostgreSQL")
