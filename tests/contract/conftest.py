"""The contract suite runs unchanged against every backend.

``storage`` is a started backend with its own empty namespace (a schema on
PostgreSQL, a file on SQLite). ``make_storage()`` opens *another* instance over
the same namespace, as a second process would. Every instance shares the test's
:class:`TestClock`, so leases and ``deliver_at`` are tested without sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from covey.core import CoveyConfig, StorageOptions, TestClock
from covey.storage import Storage, open_storage
from tests.conftest import drop_schema

BACKENDS = ["memory", "sqlite", "postgres"]

MakeStorage = Callable[..., Awaitable[Storage]]


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Namespace:
    """Where a test's storages live: a PostgreSQL ``schema`` in the database at
    ``url``, or the SQLite file at ``path`` (memory: nowhere)."""

    backend: str
    url: str
    schema: str
    path: Path


@pytest.fixture
def namespace(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Namespace:
    url = request.getfixturevalue("pg_database") if backend == "postgres" else ""
    return Namespace(backend, url, f"t_{uuid.uuid4().hex[:12]}", tmp_path / "covey.db")


@pytest.fixture
async def make_storage(
    backend: str, clock: TestClock, namespace: Namespace
) -> AsyncIterator[MakeStorage]:
    opened: list[Storage] = []
    memory_shared: list[Storage] = []
    schema, url = namespace.schema, namespace.url

    async def make(shards: int = 16, start: bool = True, **options: Any) -> Storage:
        opts = StorageOptions(schema=schema, **options)
        if backend == "memory":
            if memory_shared and not options:
                return memory_shared[0]  # one process: every "instance" is the same store
            config = CoveyConfig(database_url="memory://", shards=shards, storage=opts)
        elif backend == "sqlite":
            config = CoveyConfig(
                database_url=f"sqlite:///{namespace.path}", shards=shards, storage=opts
            )
        else:
            config = CoveyConfig(database_url=url, shards=shards, storage=opts)
        storage = open_storage(config, clock=clock)
        if start:
            await storage.start()
        opened.append(storage)
        if backend == "memory":
            memory_shared.append(storage)
        return storage

    yield make
    for storage in reversed(opened):
        await storage.close()
    if backend == "postgres":
        await drop_schema(url, schema)


@pytest.fixture
async def storage(make_storage: MakeStorage) -> Storage:
    return await make_storage()
