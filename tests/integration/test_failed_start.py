"""A ``Cluster.start()`` that fails closes what it opened and re-raises (issue 8).

Before, a start that raised left its storage open: on SQLite the connection's
(non-daemon) thread kept the process alive after the event loop ended, and a
runner registered before the failure stayed in the membership table until its
heartbeat expired. Each test makes start fail at one step and checks what a
user would notice: the original error, no thread left behind, the storage
closed, the port free again and no registration left for peers to count.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from covey.cluster import Cluster
from covey.core import (
    ClusterError,
    ConfigError,
    CoveyConfig,
    Reason,
    StorageError,
    SystemClock,
)
from covey.sharding.runtime import Sharding
from covey.storage import Storage, open_storage


def _non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t.is_alive()}


def _threads_left(before: set[threading.Thread]) -> set[threading.Thread]:
    """The non-daemon threads not there ``before``, once closing ones have ended."""
    for thread in _non_daemon_threads() - before:
        thread.join(timeout=5)  # a closed connection's thread ends by itself
    return _non_daemon_threads() - before


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _config(url: str, port: int = 0) -> CoveyConfig:
    return CoveyConfig(database_url=url, shards=8, runner_host="127.0.0.1", runner_port=port)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'failed-start.db'}"
    return str(request.getfixturevalue("fresh_pg_database"))


async def _assert_closed(storage: Storage) -> None:
    with pytest.raises(StorageError):
        await storage.info()


async def _registered_runners(url: str) -> int:
    """Runners the store lists, read through a storage of its own."""
    storage = open_storage(_config(url), clock=SystemClock())
    await storage.start()
    try:
        return (await storage.info()).runners
    finally:
        await storage.close()


async def _other_sessions(url: str) -> int:
    """Connections to the test database other than the one asking (PostgreSQL)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    finally:
        await conn.close()


async def test_a_port_in_use_closes_the_storage(url: str, busy_port: int) -> None:
    """The transport cannot listen: the storage opened just before is closed."""
    before = _non_daemon_threads()
    cluster = Cluster(_config(url, busy_port))
    with pytest.raises(ConfigError) as info:
        await cluster.start()
    assert info.value.details.get("setting") == "runner_port"  # the original error
    assert not _threads_left(before)
    await _assert_closed(cluster.storage)
    if url.startswith("postgres"):
        assert await _other_sessions(url) == 0
    await cluster.stop()  # harmless after a failed start


async def test_a_failure_after_registering_leaves_nothing_behind(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Membership cannot be read: the runner registered a moment before is
    deregistered, the transport closed, the storage closed, no task left."""
    before = _non_daemon_threads()
    tasks_before = asyncio.all_tasks()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = Cluster(_config(url, port))
    refused = StorageError("membership unreadable (injected)")

    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise refused

    monkeypatch.setattr(Sharding, "refresh_membership", unreadable)  # right after register
    with pytest.raises(StorageError) as info:
        await cluster.start()
    assert info.value is refused
    assert not _threads_left(before)
    await _assert_closed(cluster.storage)
    assert asyncio.all_tasks() - tasks_before == set()
    assert await _registered_runners(url) == 0  # peers will not count it
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))
    if url.startswith("postgres"):
        assert await _other_sessions(url) == 0


async def test_a_cluster_that_failed_to_start_cannot_be_started_again(
        url: str, busy_port: int) -> None:
    cluster = Cluster(_config(url, busy_port))
    with pytest.raises(ConfigError):
        await cluster.start()
    with pytest.raises(ClusterError) as info:  # not a second half-start
        await cluster.start()
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert not info.value.retryable
    await _assert_closed(cluster.storage)


async def test_a_test_cluster_whose_member_fails_to_start_closes_its_store(
    tmp_path: Path,
) -> None:
    from covey.testing import TestCluster

    def fail_on_the_second(cluster: Cluster, started: list[int] = []) -> None:  # noqa: B006
        started.append(1)
        if len(started) == 2:
            raise ConfigError("the second member refuses to start")

    before = _non_daemon_threads()
    harness = TestCluster(runners=3, database_url=f"sqlite:///{tmp_path / 'tc.db'}",
                          configure=fail_on_the_second)
    with pytest.raises(ConfigError, match="second member"):
        await harness.__aenter__()
    assert harness.runners == []
    assert _threads_left(before) == set()
