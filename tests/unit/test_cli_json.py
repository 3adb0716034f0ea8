"""``--json`` on every command: stable keys, ids as strings, errors as JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel

import covey
from covey.cli import main
from covey.cli._output import MAX_SAFE_INTEGER, plain
from covey.core import CoveyConfig
from covey.jobs import Retry

JOB_KEYS = ["id", "name", "state", "attempts", "last_error", "errors", "tenant", "created_at",
            "scheduled_for", "finished_at", "progress", "progress_note", "heartbeat_at",
            "result"]


class Order(BaseModel):
    n: int


def invoke(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, **kwargs)


def document(env: dict[str, str], *args: str) -> Any:
    result = invoke(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    url = (request.getfixturevalue("fresh_pg_database") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'jobs.db'}")
    return {"COVEY_DATABASE_URL": url, "COVEY_SHARDS": "8"}


async def _fill(env: dict[str, str]) -> tuple[int, int]:
    cluster = covey.Cluster(CoveyConfig.from_env(env))

    @cluster.job("order", retry=Retry(max_attempts=1))
    async def order(job: covey.JobContext, msg: Order) -> dict[str, int]:
        if msg.n < 0:
            raise ValueError("negative order")
        return {"n": msg.n, "big": 2**60}

    async with cluster:
        with covey.use_context(covey.RequestContext(tenant_id="acme")):
            ok = await order.submit(Order(n=1))
        assert await ok.result(timeout=10) == {"n": 1, "big": 2**60}
        bad = await order.submit(Order(n=-1))
        with pytest.raises(covey.JobError):
            await bad.result(timeout=10)
    return ok.id, bad.id


def test_jobs_commands_print_stable_json(env: dict[str, str]) -> None:
    ok, dead = asyncio.run(_fill(env))
    assert ok > MAX_SAFE_INTEGER and dead > MAX_SAFE_INTEGER  # snowflakes: beyond 2^53

    listed = document(env, "jobs", "ls")["jobs"]
    assert [j["id"] for j in listed] == [str(dead), str(ok)]  # newest first, as strings
    assert all(list(j) == JOB_KEYS for j in listed)

    status = document(env, "jobs", "status", str(ok))
    assert status["state"] == "succeeded" and status["tenant"] == "acme"
    assert status["result"] == {"n": 1, "big": str(2**60)}  # no precision lost in JS
    assert status["created_at"].endswith("Z") and status["finished_at"].endswith("Z")

    dead_jobs = document(env, "jobs", "dlq", "ls")["jobs"]
    assert [j["id"] for j in dead_jobs] == [str(dead)]
    assert dead_jobs[0]["state"] == "dead"
    assert "ValueError: negative order" in dead_jobs[0]["last_error"]

    asks = invoke(env, "jobs", "dlq", "purge", "--json")
    assert asks.exit_code == 2 and "--yes" in asks.output  # never a prompt inside JSON
    assert document(env, "jobs", "dlq", "purge", "--yes") == {"purged": 1}
    assert document(env, "jobs", "dlq", "ls") == {"jobs": []}


def test_an_unknown_job_is_a_json_error(env: dict[str, str]) -> None:
    result = invoke(env, "jobs", "status", "12345", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["reason"] == "job_not_found"
    assert set(error) == {"reason", "message", "details"}


def test_status_and_migrate(env: dict[str, str]) -> None:
    assert document(env, "migrate") == {"schema_version": document(env, "status")[
        "schema_version"], "up_to_date": True}
    status = document(env, "status")
    backend = env["COVEY_DATABASE_URL"].split(":")[0].replace("postgresql", "postgres")
    assert status == {"backend": backend, "location": status["location"],
                      "schema_version": status["schema_version"], "shards": 8, "runners": 0,
                      "messages_total": 0, "messages_unprocessed": 0, "event_groups": [],
                      "connections": []}


def test_every_printing_command_takes_json() -> None:
    def walk(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [p for name, sub in command.commands.items()
                    for p in walk(sub, f"{path} {name}")]
        has = any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)
        return [] if has else [path]

    assert walk(main, "covey") == []


def test_plain_keeps_javascript_safe_numbers() -> None:
    assert plain({"a": MAX_SAFE_INTEGER, "b": MAX_SAFE_INTEGER + 1, "c": -(2**60)}) == {
        "a": MAX_SAFE_INTEGER, "b": str(MAX_SAFE_INTEGER + 1), "c": str(-(2**60))}
    assert plain([True, None, 1.5, (1, 2**63), b"\x01"]) == [True, None, 1.5, [1, str(2**63)],
                                                             "01"]
    assert plain(Order(n=2**62)) == {"n": str(2**62)}
