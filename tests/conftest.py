"""Shared fixtures: the PostgreSQL test server and per-test databases.

The server comes from ``COVEY_TEST_DATABASE_URL`` (default: the local trust-auth
server). Tests that need it are skipped with a loud reason when it is down,
except under ``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest

DEFAULT_TEST_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own, in a thread of its own.

    Session fixtures may be first requested from inside a running test loop
    (``request.getfixturevalue`` in an async fixture), where ``asyncio.run`` is
    not allowed; a separate thread always works.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pg_server_url() -> str:
    return os.environ.get("COVEY_TEST_DATABASE_URL", DEFAULT_TEST_URL)


def _with_database(url: str, database: str) -> str:
    base, _, rest = url.rpartition("/")
    query = ""
    if "?" in rest:
        query = "?" + rest.split("?", 1)[1]
    return f"{base}/{database}{query}"


async def _probe(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


_probe_result: list[str | None] = []


def require_postgres() -> str:
    """The server URL, or skip (fail under CI=true) when it cannot be reached."""
    url = pg_server_url()
    if not _probe_result:
        _probe_result.append(run_sync(_probe(url)))
    problem = _probe_result[0]
    if problem is not None:
        message = (
            f"PostgreSQL at {url} is not reachable ({problem}); set COVEY_TEST_DATABASE_URL "
            "or start the server"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and " + message, pytrace=False)
        pytest.skip("SKIPPING POSTGRES TESTS: " + message)
    return url


async def drop_schema(url: str, schema: str) -> None:
    """Drop a test's PostgreSQL schema (its own namespace in a shared database)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _create_db(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database created for this test session and dropped after it; its URL."""
    server = require_postgres()
    name = f"covey_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    run_sync(_create_db(server, name))
    try:
        yield _with_database(server, name)
    finally:
        run_sync(_drop_db(server, name))


@pytest.fixture
def fresh_pg_database() -> Iterator[str]:
    """A database of its own for one test (multi-process tests); dropped after."""
    server = require_postgres()
    name = f"covey_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    run_sync(_create_db(server, name))
    try:
        yield _with_database(server, name)
    finally:
        run_sync(_drop_db(server, name))
