"""``covey runners`` (and the other commands' ``--json``) against live runners.

In-process runners on SQLite for the states (serving, client, stale) and the
shard split; real ``covey run`` processes on SQLite and PostgreSQL for the
command as an operator runs it (a subprocess reading another process's runners).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import covey
from covey.cli import main
from covey.core import CoveyConfig

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 12

APP = """
import covey

cluster = covey.Cluster.from_env()


@cluster.singleton("beacon")
async def beacon(ctx: covey.SingletonContext) -> None:
    import asyncio, logging
    logging.getLogger("covey.app").info("beacon up")
    await asyncio.Event().wait()
"""


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def runners_json(env: dict[str, str]) -> dict[str, Any]:
    result = invoke(env, "runners", "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'covey.db'}",
            "COVEY_SHARDS": str(SHARDS)}


async def test_runners_lists_states_and_splits_the_shards(env: dict[str, str]) -> None:
    config = CoveyConfig.from_env(env)
    a, b = covey.Cluster(config), covey.Cluster(config)
    # a web pod of the split layout: client-only by setting (COVEY_CLIENT_ONLY)
    client = covey.Cluster(CoveyConfig.from_env({**env, "COVEY_CLIENT_ONLY": "true"}))
    async with a, b, client:
        def owned(member: covey.Cluster) -> list[str]:
            return sorted(str(s) for s in member.sharding.owned)

        # until the hand-over settles: then what the command shows is what each holds
        deadline = time.monotonic() + 20
        while True:
            document = await asyncio.to_thread(runners_json, env)
            rows = {r["address"]: r for r in document["runners"]}
            shown = [sorted(rows.get(str(m.address), {}).get("shards", [])) for m in (a, b)]
            if all(shown) and shown == [owned(a), owned(b)]:
                break
            assert time.monotonic() < deadline, (shown, owned(a), owned(b))
            await asyncio.sleep(0.1)

        assert document["shards_per_group"] == SHARDS
        assert set(rows) >= {str(a.address), str(b.address)}
        assert [r["state"] for r in document["runners"]].count("client") == 1
        assert client.client_only and client.address is None  # no runner port
        for member in (a, b):
            row = rows[str(member.address)]
            assert row["state"] == "serving"
            assert row["groups"] == ["default"] and row["weight"] == 1
            assert row["shard_count"] == len(row["shards"]) > 0
            assert 0 <= row["heartbeat_age_s"] < 6
            assert row["last_heartbeat"].endswith("Z")
        assert set(rows[str(a.address)]["shards"]).isdisjoint(rows[str(b.address)]["shards"])
        assert len(rows[str(a.address)]["shards"]) + len(rows[str(b.address)]["shards"]) == SHARDS
        assert list(document["runners"][0]) == [
            "address", "state", "machine_id", "groups", "weight", "shard_count", "shards",
            "last_heartbeat", "heartbeat_age_s"]

        table = await asyncio.to_thread(invoke, env, "runners")
        assert table.exit_code == 0, table.output
        assert str(a.address) in table.stdout and str(b.address) in table.stdout
        assert "serving" in table.stdout and "client" in table.stdout
        assert f"runners (3; {SHARDS} shards per group)" in table.stdout

        # a runner that dies without leaving shows as stale once it misses
        # heartbeats for longer than the TTL the operator's command uses
        await b.abort()
        # 3 s: three heartbeats of the live runner (one a second), so a busy machine
        # does not make it look stale too
        short_ttl = {**env, "COVEY_SHARDING_RUNNER_TTL": "3"}
        deadline = time.monotonic() + 10
        while True:
            rows = {r["address"]: r for r in
                    (await asyncio.to_thread(runners_json, short_ttl))["runners"]}
            if rows.get(str(b.address), {}).get("state") == "stale" and \
                    rows.get(str(a.address), {}).get("state") == "serving":
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)
        # a stale runner is assigned nothing: the live one gets every shard
        assert rows[str(b.address)]["shard_count"] == 0
        assert rows[str(a.address)]["shard_count"] == SHARDS


def test_runners_on_an_empty_store(env: dict[str, str]) -> None:
    assert runners_json(env) == {"shards_per_group": SHARDS, "runners": []}
    assert "runners (0;" in invoke(env, "runners").stdout


def test_a_bad_setting_is_a_json_error(env: dict[str, str]) -> None:
    bad = {**env, "COVEY_SHARDS": "many"}
    for command in (["runners"], ["status"], ["migrate"], ["jobs", "ls"]):
        result = invoke(bad, *command, "--json")
        assert result.exit_code == 2, (command, result.output)
        error = json.loads(result.stdout)["error"]
        assert error["reason"] == "config_invalid"
        assert "COVEY_SHARDS" in error["message"]


# ---- real processes --------------------------------------------------------------


def _process_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": database_url, "COVEY_SHARDS": str(SHARDS),
                "COVEY_CLUSTER_SECRET": "cli-test-secret",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])})
    env.update(extra)
    return env


class Runner:
    """``covey run app:cluster --json --log-format json`` in a process of its own."""

    def __init__(self, workdir: Path, env: dict[str, str], *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "covey", "run", "app:cluster", "--json",
             "--log-format", "json", *extra],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the ready line, or EOF if it died
        if not line:
            self.process.wait(timeout=10)
            raise AssertionError(f"covey run died: {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=30)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


@pytest.fixture
def processes() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        if runner.process.poll() is None:
            runner.process.kill()
        runner.process.wait(timeout=10)
        for stream in (runner.process.stdout, runner.process.stderr):
            if stream is not None:
                stream.close()


def _cli(workdir: Path, env: dict[str, str], *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "covey", *args], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _operate_two_runners(workdir: Path, env: dict[str, str], processes: list[Runner]) -> None:
    (workdir / "app.py").write_text(APP, encoding="utf-8")
    assert _cli(workdir, env, "migrate", "--json")["up_to_date"] is True
    processes += [Runner(workdir, env), Runner(workdir, env)]
    addresses = {p.ready["runner"] for p in processes}
    assert all(p.ready["event"] == "ready" for p in processes)

    deadline = time.monotonic() + 30
    while True:  # until both hold their share (the second one's join rebalances)
        document = _cli(workdir, env, "runners", "--json")
        rows = {r["address"]: r for r in document["runners"]}
        counts = [rows.get(a, {}).get("shard_count", 0) for a in addresses]
        if set(rows) == addresses and sum(counts) == SHARDS and all(counts):
            break
        assert time.monotonic() < deadline, document
        time.sleep(0.2)
    assert all(r["state"] == "serving" for r in rows.values())
    assert sorted(s for r in rows.values() for s in r["shards"]) == sorted(
        f"default:{i}" for i in range(1, SHARDS + 1))
    status = _cli(workdir, env, "status", "--json")
    assert status["runners"] == 2 and status["shards"] == SHARDS

    # SIGTERM: the runner leaves (deregisters) and exits 0; the command sees it go
    leaving = processes[0]
    code, logs = leaving.stop()
    assert code == 0, logs
    remaining = _cli(workdir, env, "runners", "--json")["runners"]
    assert [r["address"] for r in remaining] == [processes[1].ready["runner"]]

    # its logs were JSON lines naming the runner (covey run --log-format json)
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    joined = [x for x in lines if x["logger"] == "covey.cluster" and "joined" in x["message"]]
    assert joined and joined[0]["runner"] == leaving.ready["runner"], logs


@pytest.mark.acceptance  # starts real processes
def test_operator_commands_against_real_runners_on_sqlite(
        tmp_path: Path, processes: list[Runner]) -> None:
    env = _process_env(f"sqlite:///{tmp_path / 'covey.db'}")
    _operate_two_runners(tmp_path, env, processes)


@pytest.mark.acceptance  # starts real processes
@pytest.mark.postgres
def test_operator_commands_against_real_runners_on_postgres(
        tmp_path: Path, processes: list[Runner], fresh_pg_database: str) -> None:
    env = _process_env(fresh_pg_database)
    _operate_two_runners(tmp_path, env, processes)
