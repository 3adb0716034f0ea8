"""``covey webhooks …`` against a SQLite database, with a real runner delivering
to a local receiver for the dead-letter commands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import covey
from covey.cli import main
from covey.core import CoveyConfig
from covey.webhooks import Endpoint, verify
from tests.unit._waiting import until


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'hooks.db'}", "COVEY_SHARDS": "8"}


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["webhooks", *args], env=env, **kwargs)


def ok(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    result = cli(env, *args, **kwargs)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--json").stdout)


def stored(env: dict[str, str]) -> list[Endpoint]:
    """The endpoints in the database, read through the Python API."""
    async def read() -> list[Endpoint]:
        async with covey.Cluster(CoveyConfig.from_env(env), client_only=True) as cluster:
            return await cluster.webhooks.endpoints()
    return asyncio.run(read())


def rows(table: str) -> list[list[str]]:
    """The cells of each row of a printed table."""
    return [[c.strip() for c in line.strip("│┃ ").split("│")] for line in table.splitlines()]


def test_add_list_show_disable_enable_rotate_delete(env: dict[str, str]) -> None:
    added = ok(env, "add", "https://hooks.example.com/in", "--type", "invoice.paid",
               "--type", "order.*", "--tenant", "acme", "--description", "billing",
               "--header", "X-Team=payments", "--schedule", "1,60", "--timeout", "3",
               "--concurrency", "4")
    [endpoint] = stored(env)
    secret = str(endpoint.secret)
    assert f"endpoint {endpoint.id} added" in added.stdout and secret in added.stdout
    assert (endpoint.types, endpoint.tenant, endpoint.headers) == (
        ("invoice.paid", "order.*"), "acme", (("X-Team", "payments"),))
    assert (endpoint.schedule, endpoint.timeout, endpoint.concurrency) == ((1.0, 60.0), 3.0, 4)

    listed = ok(env, "endpoints").stdout
    assert "webhook endpoints (1)" in listed and endpoint.id in listed
    assert "invoice.paid, order.*" in listed and "whsec_" not in listed
    assert "webhook endpoints (0)" in ok(env, "endpoints", "--tenant", "other").stdout
    shown = ok(env, "show", endpoint.id).stdout
    assert ["retries", "1 s, 60 s"] in rows(shown) and ["header", "X-Team: payments"] in rows(shown)
    assert ["tenant", "acme"] in rows(shown) and "whsec_" not in shown
    document = as_json(env, "show", endpoint.id)
    assert document["id"] == endpoint.id and document["headers"] == {"X-Team": "payments"}
    assert document["schedule"] == [1.0, 60.0] and "whsec_" not in json.dumps(document)

    ok(env, "disable", endpoint.id, "--reason", "receiver down for maintenance")
    assert not stored(env)[0].enabled
    [row] = [r for r in rows(ok(env, "endpoints").stdout) if r[0] == endpoint.id]
    assert row[4] == "no" and row[5].startswith("receiver down")
    assert ["disabled reason", "receiver down for maintenance"] in rows(
        ok(env, "show", endpoint.id).stdout)
    [listed_doc] = as_json(env, "endpoints")["endpoints"]
    assert (listed_doc["enabled"], listed_doc["disabled_reason"]) == (
        False, "receiver down for maintenance")
    ok(env, "enable", endpoint.id)
    assert stored(env)[0].enabled and stored(env)[0].disabled_reason is None

    rotated = ok(env, "rotate", endpoint.id, "--overlap", "600").stdout
    after = stored(env)[0]
    assert str(after.secret) != secret and f"new secret {after.secret}" in rotated
    assert [str(s) for s in after.signing_secrets(after.created_at)] == [str(after.secret), secret]
    assert "old secret signs until" in ok(env, "show", endpoint.id).stdout
    assert len(as_json(env, "show", endpoint.id)["old_secrets_until"]) == 1

    refused = cli(env, "delete", endpoint.id, input="n\n")
    assert refused.exit_code == 1 and len(stored(env)) == 1
    assert cli(env, "delete", endpoint.id, "--json").exit_code == 2  # --json never prompts
    assert f"endpoint {endpoint.id} deleted" in ok(env, "delete", endpoint.id, "--yes").stdout
    assert stored(env) == []


def test_add_json_prints_the_secret_and_a_schedule_of_none(env: dict[str, str]) -> None:
    document = as_json(env, "add", "https://hooks.example.com/in", "--schedule", "")
    [endpoint] = stored(env)
    assert document["id"] == endpoint.id and document["secret"] == str(endpoint.secret)
    assert document["schedule"] == [] and endpoint.schedule == ()
    assert document["types"] == [] and document["old_secrets_until"] == []


@pytest.mark.parametrize("command", [
    ["show", "ep_404"], ["disable", "ep_404"], ["enable", "ep_404"], ["rotate", "ep_404"],
    ["delete", "ep_404", "--yes"], ["show", "not-an-id"],
])
def test_an_unknown_endpoint_exits_2(env: dict[str, str], command: list[str]) -> None:
    result = cli(env, *command)
    assert result.exit_code == 2
    assert "error (webhook_endpoint_not_found)" in result.stderr and command[1] in result.stderr


def test_bad_input_exits_2_and_stores_nothing(env: dict[str, str]) -> None:
    for url in ("ftp://hooks.example.com/in", "not a url"):
        result = cli(env, "add", url)
        assert result.exit_code == 2, result.output
        assert "error (invalid_argument)" in result.stderr
    private = cli(env, "add", "http://127.0.0.1:8080/in")
    assert private.exit_code == 2 and "error (webhook_target_refused)" in private.stderr
    document = json.loads(cli(env, "add", "http://10.0.0.7/in", "--json").stdout)
    assert document["error"]["reason"] == "webhook_target_refused"
    bad_schedule = json.loads(cli(env, "add", "https://h.example.com", "--schedule", "-5",
                                  "--json").stdout)
    assert bad_schedule["error"]["details"]["field"] == "schedule"
    assert stored(env) == []
    assert "endpoint ep_" in ok(env, "add", "http://127.0.0.1:8080/in", "--allow-private").stdout

    for option, value in (("--header", "no-equals-sign"), ("--schedule", "5,soon")):
        usage = cli(env, "add", "https://h.example.com", option, value)
        assert usage.exit_code == 2 and option in usage.stderr
    for since in ("yesterday", "nan", "2026-13-01"):
        usage = cli(env, "dlq", "ls", "--since", since)
        assert usage.exit_code == 2 and "--since" in usage.stderr, since
    backwards = cli(env, "dlq", "purge", "--since", "2026-01-02", "--until", "2026-01-01",
                    "--yes")
    assert backwards.exit_code == 2 and "--since is after --until" in backwards.stderr

    neither = cli(env, "dlq", "replay")
    assert neither.exit_code == 2 and "DELIVERY_ID" in neither.stderr
    both = cli(env, "dlq", "replay", "5", "--endpoint", "ep_1")
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = cli(env, "attempts", "12345")
    assert missing.exit_code == 2 and "error (webhook_delivery_not_found)" in missing.stderr


class Receiver:
    """A local HTTP server answering every POST with ``status`` (and keeping the bodies)."""

    def __init__(self) -> None:
        self.status = 500
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = [line.split(": ", 1) for line in head[1:] if ": " in line]
        headers = {name.lower(): value for name, value in fields}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append((headers, body))
        answer = b"receiver says no" if self.status >= 300 else b"ok"
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (self.status, len(answer), answer))
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = Receiver()
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    app.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    async with server:
        yield app


async def dead_delivery(cluster: covey.Cluster, endpoint: Endpoint, receiver: Receiver) -> int:
    receiver.status = 500
    sent = await cluster.webhooks.send("invoice.paid", {"invoice": "in_1"})
    delivery_id = sent.deliveries[endpoint.id]

    async def dead() -> bool:
        return delivery_id in [d.id for d in await cluster.webhooks.dead_letters()]
    await until(dead, timeout=20)
    return delivery_id


async def delivered(cluster: covey.Cluster, delivery_id: int) -> None:
    async def done() -> bool:
        return (await cluster.webhooks.delivery(delivery_id)).state == "delivered"
    await until(done, timeout=20)


async def run(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    # the CLI runs its own event loop: give it a thread while this loop serves
    return await asyncio.to_thread(ok, env, *args, **kwargs)


async def test_attempts_and_the_dead_letter_against_a_live_runner(
    env: dict[str, str], receiver: Receiver
) -> None:
    async with covey.Cluster(CoveyConfig.from_env(env)) as cluster:
        endpoint = await cluster.webhooks.add_endpoint(
            receiver.url, types="invoice.*", schedule=[], allow_private=True)
        first = await dead_delivery(cluster, endpoint, receiver)

        shown = (await run(env, "attempts", str(first))).stdout
        assert f"delivery {first}" in shown and "dead; attempts (1)" in shown
        [row] = [r for r in rows(shown) if r[0] == "1"]
        assert row[2:4] == ["http_error", "500"] and row[5] == "receiver says no"
        document = json.loads((await run(env, "attempts", str(first), "--json")).stdout)
        assert (document["id"], document["state"], document["endpoint_id"]) == (
            str(first), "dead", endpoint.id)
        [attempt] = document["attempts"]
        assert (attempt["number"], attempt["outcome"], attempt["status"]) == (1, "http_error", 500)
        assert attempt["response"] == "receiver says no" and attempt["at"].endswith("Z")

        listed = (await run(env, "dlq", "ls")).stdout
        assert "dead webhook deliveries (1)" in listed and str(first) in listed
        assert str(first) in (await run(env, "deliveries", "--state", "error")).stdout
        created = (await cluster.webhooks.delivery(first)).created_at
        for selected, args in ((1, ("--since", str(int(created)))),
                               (0, ("--since", str(int(created) + 60))),
                               (1, ("--until", "2999-01-01T00:00:00Z")),
                               (0, ("--until", "2001-01-01T00:00:00")),
                               (1, ("--endpoint", endpoint.id)),
                               (0, ("--endpoint", "ep_1"))):
            found = json.loads((await run(env, "dlq", "ls", *args, "--json")).stdout)
            assert len(found["deliveries"]) == selected, args

        receiver.status = 200
        replayed = (await run(env, "dlq", "replay", str(first))).stdout
        assert f"delivery {first}" in replayed and "requeued" in replayed
        await delivered(cluster, first)
        assert "delivered; attempts" in (await run(env, "attempts", str(first))).stdout
        headers, body = receiver.received[-1]
        assert verify(headers, body, endpoint.secret).id == headers["webhook-id"]
        assert headers["webhook-id"] == receiver.received[0][0]["webhook-id"]  # same message
        assert "dead webhook deliveries (0)" in (await run(env, "dlq", "ls")).stdout

        second = await dead_delivery(cluster, endpoint, receiver)
        receiver.status = 200
        count = (await run(env, "dlq", "replay", "--endpoint", endpoint.id)).stdout
        assert "requeued 1 dead delivery" in count
        await delivered(cluster, second)

        third = await dead_delivery(cluster, endpoint, receiver)

    # no runner is up any more: a replay is refused, the rest reads and edits storage
    no_runner = await asyncio.to_thread(cli, env, "dlq", "replay", str(third))
    assert no_runner.exit_code == 2 and "error (peer_unavailable)" in no_runner.stderr
    assert "is one up?" in no_runner.stderr
    assert await asyncio.to_thread(dead_ids, env) == [str(third)]
    refused = await asyncio.to_thread(cli, env, "dlq", "purge", input="n\n")
    assert refused.exit_code == 1 and await asyncio.to_thread(dead_ids, env) == [str(third)]
    kept = await run(env, "dlq", "purge", "--endpoint", "ep_1", "--yes")
    assert "purged 0 dead deliveries" in kept.stdout
    purged = json.loads((await run(env, "dlq", "purge", "--endpoint", endpoint.id,
                                   "--yes", "--json")).stdout)
    assert purged == {"purged": 1} and await asyncio.to_thread(dead_ids, env) == []
    gone = await asyncio.to_thread(cli, env, "attempts", str(third))
    assert gone.exit_code == 2 and "error (webhook_delivery_not_found)" in gone.stderr
    # the delivered ones stay
    listed = json.loads((await run(env, "deliveries", "--json")).stdout)["deliveries"]
    assert {(d["id"], d["state"]) for d in listed} == {(str(first), "delivered"),
                                                        (str(second), "delivered")}


def dead_ids(env: dict[str, str]) -> list[str]:
    return [d["id"] for d in as_json(env, "dlq", "ls")["deliveries"]]
