"""``covey events …`` (and the group lag in ``covey status``) against a SQLite
database filled by a real in-process runner."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import covey
from covey.cli import main
from covey.cli._output import MAX_SAFE_INTEGER
from covey.core import CoveyConfig
from covey.jobs import Retry

from ._waiting import until

GROUP_KEYS = ["group", "topic", "start", "created_at", "cursor", "replay_until", "replaying",
              "replays"]
LAG_KEYS = ["group", "topics", "lag", "pending", "unfanned", "lag_seconds", "dead_letters"]
DEAD_KEYS = ["message_id", "group", "topic", "type", "event_id", "key", "attempts", "error",
             "errors", "failed_at"]


class Invoice(covey.Event, topic="invoices", key="order_id"):
    order_id: str


class Billing:
    """Two groups of ``invoices``: billing refuses the orders in ``fail`` (one
    attempt, so they go dead at once); email handles everything."""

    def __init__(self) -> None:
        self.handled: dict[str, list[str]] = {"billing": [], "email": []}
        self.fail: set[str] = {"poison"}

    def declare(self, cluster: covey.Cluster) -> None:
        once = Retry(max_attempts=1)

        @cluster.subscribe(Invoice, group="billing", start="earliest", retry=once)
        async def bill(event: Invoice, ctx: covey.EventContext) -> None:
            if event.order_id in self.fail:
                raise ValueError(f"cannot bill {event.order_id}")
            self.handled["billing"].append(event.order_id)

        @cluster.subscribe(Invoice, group="email", start="earliest", retry=once)
        async def mail(event: Invoice, ctx: covey.EventContext) -> None:
            self.handled["email"].append(event.order_id)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}", "COVEY_SHARDS": "8"}


def runner_cluster(env: dict[str, str], app: Billing) -> covey.Cluster:
    cluster = covey.Cluster(CoveyConfig.from_env(env))
    app.declare(cluster)
    return cluster


async def dead_count(cluster: covey.Cluster, group: str = "billing") -> int:
    return len(await cluster.events.dead_letters(group))


async def has_dead(cluster: covey.Cluster) -> bool:
    return await dead_count(cluster) > 0


async def publish_and_settle(cluster: covey.Cluster, app: Billing, names: list[str]) -> None:
    billed = len(app.handled["billing"]) + sum(n not in app.fail for n in names)
    mailed = len(app.handled["email"]) + len(names)
    await cluster.publish_many([Invoice(order_id=n) for n in names])
    await until(lambda: len(app.handled["billing"]) == billed
                and len(app.handled["email"]) == mailed, timeout=10)


async def populate(env: dict[str, str]) -> Billing:
    app = Billing()
    async with runner_cluster(env, app) as cluster:
        await publish_and_settle(cluster, app, ["a", "b", "c", "poison"])
        await until(lambda: has_dead(cluster), timeout=10)
    return app


@pytest.fixture
def filled(env: dict[str, str]) -> Billing:
    return asyncio.run(populate(env))


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["events", *args], env=env, **kwargs)


def document(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_topics_groups_lag_and_the_dead_letter(env: dict[str, str], filled: Billing) -> None:
    out = cli(env, "topics").stdout
    assert "topics (1)" in out and "invoices" in out
    [topic] = document(env, "topics")["topics"]
    assert topic["topic"] == "invoices" and topic["events"] == 4
    assert topic["unsequenced"] == 0 and topic["last_published_at"].endswith("Z")
    assert topic["last_position"] - topic["first_position"] == 3

    out = cli(env, "groups").stdout
    assert "groups (2)" in out and "billing" in out and "email" in out
    assert "earliest" in out and "until" not in out  # no replay under way
    groups = document(env, "groups")["groups"]
    assert [(g["group"], g["topic"]) for g in groups] == [("billing", "invoices"),
                                                         ("email", "invoices")]
    assert all(list(g) == GROUP_KEYS for g in groups)
    # the events singleton moves cursors lazily: deliveries were stored at publish
    assert all(0 <= g["cursor"] <= topic["last_position"] and not g["replaying"]
               and g["replays"] == 0 and g["start"] == "earliest" for g in groups)
    assert [g["group"] for g in document(env, "groups", "email")["groups"]] == ["email"]

    out = cli(env, "lag").stdout
    assert "group lag (2)" in out
    lag = {g["group"]: g for g in document(env, "lag")["groups"]}
    assert all(list(g) == LAG_KEYS for g in lag.values())
    assert lag["billing"]["lag"] == 0 and lag["billing"]["dead_letters"] == 1
    assert lag["email"]["dead_letters"] == 0 and lag["email"]["topics"] == ["invoices"]
    assert [g["group"] for g in document(env, "lag", "email")["groups"]] == ["email"]

    out = cli(env, "dlq", "ls", "billing").stdout
    assert "dead letters of billing (1)" in out and "poison" in out
    assert "ValueError: cannot bill poison" in out
    [dead] = document(env, "dlq", "ls", "billing")["dead_letters"]
    assert list(dead) == DEAD_KEYS
    assert dead["key"] == "poison" and dead["attempts"] == 1 and dead["topic"] == "invoices"
    assert int(dead["message_id"]) > MAX_SAFE_INTEGER  # a snowflake, kept whole as a string
    assert isinstance(dead["event_id"], str) and dead["failed_at"].endswith("Z")
    assert document(env, "dlq", "ls", "email") == {"dead_letters": []}
    assert len(document(env, "dlq", "ls", "billing", "--limit", "1")["dead_letters"]) == 1


def test_lag_counts_deliveries_no_runner_has_made(env: dict[str, str], filled: Billing) -> None:
    async def publish_without_runners() -> None:
        async with covey.Cluster(CoveyConfig.from_env(env), client_only=True) as client:
            await client.publish_many([Invoice(order_id="late1"), Invoice(order_id="late2")])

    asyncio.run(publish_without_runners())
    lag = {g["group"]: g for g in document(env, "lag")["groups"]}
    assert lag["billing"]["lag"] == lag["email"]["lag"] == 2
    assert lag["email"]["pending"] + lag["email"]["unfanned"] == 2
    assert lag["billing"]["lag_seconds"] >= 0 and lag["billing"]["dead_letters"] == 1

    status = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert status["event_groups"] == [
        {"group": "billing", "lag": 2, "lag_seconds": status["event_groups"][0]["lag_seconds"],
         "dead_letters": 1},
        {"group": "email", "lag": 2, "lag_seconds": status["event_groups"][1]["lag_seconds"],
         "dead_letters": 0}]
    human = CliRunner().invoke(main, ["status"], env=env)
    assert human.exit_code == 0, human.output
    assert "event groups (2)" in human.stdout and "billing" in human.stdout


def test_purge_asks_first_and_json_needs_yes(env: dict[str, str], filled: Billing) -> None:
    refused = cli(env, "dlq", "purge", "billing", input="n\n")
    assert refused.exit_code == 1  # aborted: nothing deleted
    assert len(document(env, "dlq", "ls", "billing")["dead_letters"]) == 1
    asks = cli(env, "dlq", "purge", "billing", "--json")
    assert asks.exit_code == 2 and "--yes" in asks.output  # never a prompt inside JSON

    purged = cli(env, "dlq", "purge", "billing", "--yes")
    assert purged.exit_code == 0 and "purged 1 dead letter(s) of group billing" in purged.stdout
    assert document(env, "dlq", "purge", "billing", "--yes") == {"group": "billing",
                                                                "purged": 0}
    assert document(env, "dlq", "ls", "billing") == {"dead_letters": []}
    assert {g["group"]: g["dead_letters"] for g in document(env, "lag")["groups"]} == {
        "billing": 0, "email": 0}


def test_replay_by_position_and_by_time(env: dict[str, str], filled: Billing) -> None:
    last = document(env, "topics")["topics"][0]["last_position"]
    [row] = document(env, "replay", "email", "--from", "0")["groups"]
    assert (row["group"], row["cursor"], row["replay_until"]) == ("email", 0, last)
    assert row["replaying"] and row["replays"] == 1
    assert f"until {last}" in cli(env, "groups", "email").stdout

    future = cli(env, "replay", "billing", "--from", "2999-01-01T00:00:00Z")
    assert future.exit_code == 0, future.output
    assert f"nothing of invoices to replay after position {last}" in future.stdout
    past = cli(env, "replay", "billing", "--from", "2000-01-01T00:00:00")  # no offset: UTC
    assert past.exit_code == 0, past.output
    assert f"group billing: replaying invoices positions 1..{last}" in past.stdout
    assert document(env, "groups", "billing")["groups"][0]["replays"] == 2


def test_unknown_groups_and_a_bad_from_are_clear_errors(env: dict[str, str],
                                                         filled: Billing) -> None:
    for args in (["groups", "nope"], ["lag", "nope"], ["dlq", "ls", "nope"],
                 ["dlq", "purge", "nope"], ["dlq", "purge", "nope", "--yes"],
                 ["replay", "nope", "--from", "0"]):
        result = cli(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "error (invalid_argument): no group 'nope'" in result.stderr, args
        assert "Traceback" not in result.output and "Delete" not in result.output
    error = json.loads(cli(env, "lag", "nope", "--json").stdout)["error"]
    assert error["reason"] == "invalid_argument" and error["details"]["not_found"] == "group"

    missing = cli(env, "dlq", "retry", "123")
    assert missing.exit_code == 2 and "no dead_letter '123'" in missing.stderr

    for bad in ("yesterday", "-3", "12:00 tomorrow", ""):
        result = cli(env, "replay", "billing", "--from", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "Invalid value for '--from'" in result.stderr, bad
    assert cli(env, "replay", "billing").exit_code == 2  # --from is required


def test_retry_without_a_runner_says_one_is_needed(env: dict[str, str],
                                                   filled: Billing) -> None:
    [dead] = document(env, "dlq", "ls", "billing")["dead_letters"]
    result = cli(env, "dlq", "retry", dead["message_id"])
    assert result.exit_code == 2
    assert "error (peer_unavailable)" in result.stderr and "covey run" in result.stderr
    assert "needs a runner up" in CliRunner().invoke(main, ["events", "dlq", "--help"]).stdout


async def test_dlq_retry_and_replay_against_a_live_runner(env: dict[str, str]) -> None:
    app = Billing()
    async with runner_cluster(env, app) as cluster:
        await publish_and_settle(cluster, app, ["a", "poison"])
        await until(lambda: has_dead(cluster), timeout=10)
        [dead] = await cluster.events.dead_letters("billing")

        app.fail.clear()
        # the CLI runs its own event loop: give it a thread while this loop serves
        result = await asyncio.to_thread(cli, env, "dlq", "retry", str(dead.message_id))
        assert result.exit_code == 0, result.output
        assert f"dead letter {dead.message_id} requeued" in result.stdout
        await until(lambda: app.handled["billing"] == ["a", "poison"], timeout=10)
        assert await dead_count(cluster) == 0

        between = time.time()
        await publish_and_settle(cluster, app, ["b", "c"])
        result = await asyncio.to_thread(
            cli, env, "replay", "billing", "--from",
            dt.datetime.fromtimestamp(between, dt.UTC).isoformat())
        assert result.exit_code == 0, result.output
        await until(lambda: sorted(app.handled["billing"][4:]) == ["b", "c"], timeout=10)

        result = await asyncio.to_thread(cli, env, "replay", "email", "--from", "0")
        assert result.exit_code == 0, result.output
        await until(lambda: len(app.handled["email"]) == 8, timeout=10)
        assert sorted(app.handled["email"][4:]) == ["a", "b", "c", "poison"]
        assert len(app.handled["billing"]) == 6  # not replayed
