"""``covey workflows …`` against a SQLite database filled by a real in-process runner."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import covey
from covey.cli import main
from covey.core import CoveyConfig
from covey.testing import TestCluster

from ._waiting import until

WORKFLOW_KEYS = ["id", "name", "version", "state", "steps", "created_at", "updated_at", "error",
                 "waiting_for"]
ENTRY_KEYS = ["seq", "key", "kind", "status", "result", "error", "at"]


class Shop:
    """The workflows of these tests; every step body and compensation that runs
    is appended to ``ran`` (a list: a duplicate run would show)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        #: the step ``flip`` takes first: changing it makes a journaled flip misfit
        self.flip_step = "a"

    def declare(self, cluster: covey.Cluster) -> None:
        ran = self.ran

        @cluster.workflow("greet", version=2)
        async def greet(ctx: covey.WorkflowContext, name: str) -> str:
            async def hello(to: str) -> str:
                ran.append(f"hello {to}")
                return f"hello {to}"

            return str(await ctx.step(hello, name, name="hello"))

        @cluster.workflow("saga")
        async def saga(ctx: covey.WorkflowContext, n: int) -> str:
            def reserve(n: int) -> str:
                ran.append(f"reserve {n}")
                return f"r{n}"

            def release(n: int) -> None:
                ran.append(f"release {n}")

            def charge(n: int) -> str:
                ran.append(f"charge {n}")
                raise RuntimeError("card declined")

            await ctx.step(reserve, n, name="reserve", compensate=release)
            return str(await ctx.step(charge, n, name="charge"))

        @cluster.workflow("body")
        async def body(ctx: covey.WorkflowContext, n: int) -> str:
            raise KeyError("no such order")  # fails outside any step

        @cluster.workflow("hold")
        async def hold(ctx: covey.WorkflowContext, n: int) -> str:
            def reserve(n: int) -> str:
                ran.append(f"hold {n}")
                return f"h{n}"

            def finalize(n: int) -> None:
                ran.append(f"finalized {n}")

            ctx.finalizer(finalize, n)
            await ctx.step(reserve, n, name="reserve")
            await ctx.sleep(timedelta(hours=1))  # suspends at once: the execution waits
            return "woke"

        @cluster.workflow("flip")
        async def flip(ctx: covey.WorkflowContext, n: int) -> str:
            def first(n: int) -> int:
                ran.append(f"flip {self.flip_step}")
                return n

            await ctx.step(first, n, name=self.flip_step)
            return str(await ctx.recv("go"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'workflows.db'}", "COVEY_SHARDS": "8"}


def shop_cluster(env: dict[str, str], app: Shop) -> TestCluster:
    """One in-process runner (and a client-only member) on the test's database."""
    return TestCluster(runners=1, shards=8, database_url=env["COVEY_DATABASE_URL"],
                       configure=app.declare)


async def waiting(cluster: covey.Cluster, workflow_id: str) -> bool:
    return (await cluster.workflows.status(workflow_id)).state == "waiting"


async def populate(env: dict[str, str]) -> Shop:
    """g-1, g-2 completed; s-1 compensated; x-1 failed; n-1 waiting (newest)."""
    app = Shop()
    async with shop_cluster(env, app) as tc:
        member = tc.client_member
        for workflow_id, name in (("g-1", "ann"), ("g-2", "bob")):
            handle = await member.start("greet", name, workflow_id=workflow_id)
            assert await handle.result(timeout=10) == f"hello {name}"
        for workflow, workflow_id in (("saga", "s-1"), ("body", "x-1")):
            with pytest.raises(covey.WorkflowError):
                await (await member.start(workflow, 1, workflow_id=workflow_id)).result(
                    timeout=10)
        await member.start("hold", 1, workflow_id="n-1")
        await until(lambda: waiting(member, "n-1"), timeout=10)
    assert app.ran == ["hello ann", "hello bob", "reserve 1", "charge 1", "release 1",
                       "hold 1"]
    return app


@pytest.fixture
def filled(env: dict[str, str]) -> Shop:
    return asyncio.run(populate(env))


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["workflows", *args], env=env, **kwargs)


def document(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rows(table: str) -> list[list[str]]:
    """The cells of each row of a printed table."""
    return [[cell.strip() for cell in line.strip("│┃ ").split("│")]
            for line in table.splitlines()]


def test_ls_lists_newest_first_with_errors_and_waits(env: dict[str, str],
                                                     filled: Shop) -> None:
    result = cli(env, "ls")
    assert result.exit_code == 0, result.output
    rows = {row[0]: row for row in _rows(result.stdout) if len(row) == 7}
    assert "workflows (5)" in result.stdout
    assert rows["g-1"][1:5] == ["greet", "2", "completed", "1"]
    assert rows["g-1"][6] == "-"
    assert rows["s-1"][3:5] == ["compensated", "3"]
    assert rows["s-1"][6] == "RuntimeError: card declined"
    assert rows["x-1"][3] == "failed"
    assert rows["x-1"][6] == "KeyError: 'no such order'"  # failed outside a step
    assert rows["n-1"][3] == "waiting" and rows["n-1"][6].startswith("sleep until")

    listed = document(env, "ls")["workflows"]
    assert [w["id"] for w in listed] == ["n-1", "x-1", "s-1", "g-2", "g-1"]
    assert all(list(w) == WORKFLOW_KEYS for w in listed)
    greet = listed[-1]
    assert (greet["name"], greet["version"], greet["state"], greet["steps"]) == (
        "greet", 2, "completed", 1)
    assert greet["created_at"].endswith("Z") and greet["updated_at"].endswith("Z")
    assert greet["error"] is None and greet["waiting_for"] is None
    assert listed[0]["waiting_for"].startswith("sleep until") and listed[0]["error"] is None

    def ids(*args: str) -> list[str]:
        return [w["id"] for w in document(env, "ls", *args)["workflows"]]

    assert ids("--state", "completed") == ["g-2", "g-1"]
    assert ids("--state", "compensated") == ["s-1"]
    assert ids("--state", "cancelled") == []
    assert ids("--name", "greet", "--limit", "1") == ["g-2"]
    assert ids("--name", "nothing") == []
    assert ids("--limit", "2") == ["n-1", "x-1"]
    assert "workflows (0)" in cli(env, "ls", "--state", "running").stdout
    assert cli(env, "ls", "--state", "lost").exit_code == 2  # not a state: usage error


def test_show_prints_the_status_and_the_journal(env: dict[str, str], filled: Shop) -> None:
    result = cli(env, "show", "s-1")
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert ["state", "compensated"] in rows and ["error", "RuntimeError: card declined"] in rows
    assert "journal (3)" in result.stdout
    journal = [row for row in rows if len(row) == 7 and row[0] != "seq"]
    assert [row[:4] for row in journal] == [["1", "reserve#1", "step", "done"],
                                           ["2", "charge#1", "step", "failed"],
                                           ["-1", "reserve#1:compensate", "compensate",
                                            "done"]]
    assert journal[0][4] == "'r1'" and journal[1][5] == "RuntimeError: card declined"

    shown = document(env, "show", "s-1")
    assert list(shown) == [*WORKFLOW_KEYS, "journal"]
    assert shown["id"] == "s-1" and shown["state"] == "compensated"
    assert all(list(e) == ENTRY_KEYS for e in shown["journal"])
    assert [(e["seq"], e["key"], e["status"], e["result"], e["error"])
            for e in shown["journal"]] == [
        (1, "reserve#1", "done", "r1", None),
        (2, "charge#1", "failed", None, "RuntimeError: card declined"),
        (-1, "reserve#1:compensate", "done", None, None)]
    assert all(e["at"].endswith("Z") for e in shown["journal"])

    waiting = cli(env, "show", "n-1")
    assert waiting.exit_code == 0, waiting.output
    assert any(row[0] == "waiting for" and row[1].startswith("sleep until")
               for row in _rows(waiting.stdout))
    assert [e["kind"] for e in document(env, "show", "n-1")["journal"]] == ["step", "sleep"]
    assert document(env, "show", "g-1")["journal"][0]["result"] == "hello ann"
    assert document(env, "show", "x-1")["journal"] == []  # it failed before any step


def test_unknown_ids_and_bad_transitions_exit_2(env: dict[str, str], filled: Shop) -> None:
    for args in (["show", "nope"], ["cancel", "nope"], ["resume", "nope"]):
        result = cli(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "error (workflow_not_found): no workflow with id 'nope'" in result.stderr, args
        assert "Traceback" not in result.output
        error = json.loads(cli(env, *args, "--json").stdout)["error"]
        assert error["reason"] == "workflow_not_found"
        assert error["details"]["workflow_id"] == "nope"

    empty = cli(env, "show", "")
    assert empty.exit_code == 2 and "error (invalid_argument)" in empty.stderr

    resumed = cli(env, "resume", "g-1")  # only parked executions resume
    assert resumed.exit_code == 2
    assert "error (invalid_transition)" in resumed.stderr and "completed" in resumed.stderr


def test_cancel_without_a_runner_says_one_is_needed_and_stays_stored(
    env: dict[str, str], filled: Shop
) -> None:
    result = cli(env, "cancel", "n-1", "--timeout", "1")
    assert result.exit_code == 2
    assert "error (timeout)" in result.stderr and "covey run" in result.stderr
    assert "needs a runner up" in CliRunner().invoke(main, ["workflows", "--help"]).stdout
    assert document(env, "show", "n-1")["state"] == "waiting"

    async def serve() -> None:  # the stored cancel reaches the runner that comes up
        async with shop_cluster(env, filled) as tc:
            member = tc.client_member
            await until(lambda: _done(member, "n-1"), timeout=10)
            assert (await member.workflows.status("n-1")).state == "cancelled"

    asyncio.run(serve())
    assert filled.ran.count("finalized 1") == 1


async def _done(cluster: covey.Cluster, workflow_id: str) -> bool:
    return (await cluster.workflows.status(workflow_id)).done


def runner_cluster(env: dict[str, str], app: Shop) -> covey.Cluster:
    cluster = covey.Cluster(CoveyConfig.from_env(env))
    app.declare(cluster)
    return cluster


async def test_cancel_against_a_live_runner(env: dict[str, str]) -> None:
    app = Shop()
    async with runner_cluster(env, app) as cluster:
        handle = await cluster.start("hold", 7, workflow_id="h-7")
        await until(lambda: waiting(cluster, "h-7"), timeout=10)
        # the CLI runs its own event loop: give it a thread while this loop serves
        result = await asyncio.to_thread(cli, env, "cancel", "h-7")
        assert result.exit_code == 0, result.output
        assert "workflow h-7 (hold) is cancelled" in result.stdout
        with pytest.raises(covey.WorkflowError) as raised:
            await handle.result(timeout=10)
        assert raised.value.reason is covey.Reason.WORKFLOW_CANCELLED
        assert app.ran == ["hold 7", "finalized 7"]  # the finalizer ran, once

        again = await asyncio.to_thread(cli, env, "cancel", "h-7", "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["state"] == "cancelled"  # an ended one is left as is
        assert app.ran == ["hold 7", "finalized 7"]


async def test_resume_runs_a_parked_execution_with_the_fixed_code(env: dict[str, str]) -> None:
    app = Shop()

    async def park() -> None:
        async with shop_cluster(env, app) as tc:  # the step ran and is journaled
            await tc.client_member.start("flip", 3, workflow_id="f-3")
            await until(lambda: _journaled(tc.client_member, "f-3"), timeout=10)
        app.flip_step = "b"  # a deploy renames the step: the journal does not fit
        async with shop_cluster(env, app) as tc:
            await until(lambda: _done(tc.client_member, "f-3"), timeout=10)

    await asyncio.to_thread(asyncio.run, park())
    shown = await asyncio.to_thread(document, env, "show", "f-3")
    assert shown["state"] == "failed_nondeterministic"
    assert "'a#1'" in shown["error"] and "'b#1'" in shown["error"]  # why it is parked
    assert (await asyncio.to_thread(document, env, "ls", "--state",
                                    "failed_nondeterministic"))["workflows"][0]["id"] == "f-3"

    app.flip_step = "a"  # the fix
    async with runner_cluster(env, app) as cluster:
        result = await asyncio.to_thread(cli, env, "resume", "f-3")
        assert result.exit_code == 0, result.output
        assert "workflow f-3 (flip) resumed" in result.stdout
        await cluster.send("f-3", "go", "ship it")
        assert await cluster.workflows.handle("f-3").result(timeout=10) == "ship it"
        assert (await cluster.workflows.status("f-3")).state == "completed"
    assert app.ran == ["flip a"]  # replayed from the journal: the step ran once


async def _journaled(cluster: covey.Cluster, workflow_id: str) -> bool:
    journal = await cluster.workflows.journal(workflow_id)
    return bool(journal) and journal[0].status == "done"
