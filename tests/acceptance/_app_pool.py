"""The database pool each acceptance app opens in its runner processes."""

from __future__ import annotations

import asyncio
import os

import asyncpg


class AppPool:
    """One lazily created pool per process; optionally creates the app's tables first.

    Several runner processes start at once, so the schema is created under an
    advisory lock (``lock_key``) instead of racing ``CREATE TABLE IF NOT EXISTS``.
    """

    def __init__(self, *, max_size: int, schema: str | None = None, lock_key: int = 0) -> None:
        self._max_size = max_size
        self._schema = schema
        self._lock_key = lock_key
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    os.environ["COVEY_DATABASE_URL"], min_size=1, max_size=self._max_size)
                if self._schema is not None:
                    async with self._pool.acquire() as conn:
                        await conn.execute("SELECT pg_advisory_lock($1)", self._lock_key)
                        try:
                            await conn.execute(self._schema)
                        finally:
                            await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)
            return self._pool
