"""Acceptance tests start real runner processes against a database of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import covey
from covey.core import CoveyConfig

from ._harness import RunnerProcess, start_runner, stop_all

pytestmark = pytest.mark.acceptance


@pytest.fixture
def runners(fresh_pg_database: str) -> Iterator[list[RunnerProcess]]:
    started: list[RunnerProcess] = []
    yield started
    stop_all(started)


@pytest.fixture
def start(fresh_pg_database: str, runners: list[RunnerProcess]):  # type: ignore[no-untyped-def]
    def _start(**extra: str) -> RunnerProcess:
        runner = start_runner(fresh_pg_database, **extra)
        runners.append(runner)
        return runner

    return _start


def client_config(database_url: str, **overrides: object) -> CoveyConfig:
    base = CoveyConfig.from_env({
        "COVEY_DATABASE_URL": database_url,
        "COVEY_SHARDS": "30",
        "COVEY_CLUSTER_SECRET": "acceptance-secret",
    })
    return base if not overrides else CoveyConfig(**{**base.__dict__, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def client(fresh_pg_database: str) -> AsyncIterator[covey.Cluster]:
    from tests.acceptance.app import Ledger

    cluster = covey.Cluster(client_config(fresh_pg_database), client_only=True)
    cluster.register(Ledger)
    async with cluster:
        yield cluster
