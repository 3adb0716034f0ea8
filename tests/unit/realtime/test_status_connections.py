"""``covey status`` shows each live runner's real-time connections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import covey
from covey.cli import main
from covey.core import CoveyConfig


class Conn:
    def __init__(self, name: str) -> None:
        self.id = name

    def deliver(self, name: str, payload: bytes, *, mid: str | None = None) -> bool:
        return True


def status(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(main, ["status", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if args else result.stdout


async def test_status_shows_the_connections_of_each_live_runner(tmp_path: Path) -> None:
    env = {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'covey.db'}", "COVEY_SHARDS": "8"}
    cluster = covey.Cluster(CoveyConfig.from_env(env))
    async with cluster:
        subs = [await cluster.streams.subscribe(name) for name in ("a", "b", "b")]
        await cluster.presence.add("alice", Conn("c1"))
        await cluster.presence.add("bob", Conn("c2"))
        report = cluster._runner.connection_report  # type: ignore[union-attr]
        assert report is not None
        await report.report()  # what the loop does every 5 s
        document = await asyncio.to_thread(status, env, "--json")
        row = {k: v for k, v in document["connections"][0].items() if k != "at"}
        assert row == {"runner": str(cluster.address), "sse": 0, "websocket": 0, "users": 2,
                       "streams": 2}
        table = await asyncio.to_thread(status, env)
        assert "real-time connections" in table and str(cluster.address) in table
        for sub in subs:
            await sub.aclose()
    # the runner left: its report went with it
    assert (await asyncio.to_thread(status, env, "--json"))["connections"] == []
