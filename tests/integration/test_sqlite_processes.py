"""Several OS processes sharing one SQLite file, as runners on one host do."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# Each child opens its own SqliteStorage on the same file, waits for a common
# start time so the processes really overlap, does its part and prints JSON.
_CHILD = r"""
import asyncio, json, sys, time
from covey.core import EntityAddress, RunnerAddress, ShardId, StorageOptions, SystemClock
from covey.storage import Message, Saved
from covey.storage.sqlite import SqliteStorage

path, role, index, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

async def main() -> None:
    storage = SqliteStorage(path, shards=16, options=StorageOptions(), clock=SystemClock())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    async with storage:
        if role == "save":
            shard = ShardId("default", 1)
            messages = [
                Message(
                    id=index * 1_000_000 + n + 1,
                    address=EntityAddress("Account", f"e{n % 20}", shard),
                    tag="deposit",
                    payload=b"x",
                    primary_key=f"k{n}",  # the same 200 keys in every process
                )
                for n in range(200)
            ]
            results = await asyncio.gather(*(storage.messages.save_request(m) for m in messages))
            print(json.dumps({"saved": sum(isinstance(r, Saved) for r in results)}))
        else:
            shard = ShardId("default", 7)
            held = await storage.runners.acquire(RunnerAddress("127.0.0.1", 7000 + index), [shard])
            print(json.dumps({"held": {str(s): e for s, e in held.items()}}))

asyncio.run(main())
"""


def _run_children(path: Path, role: str, count: int) -> list[dict[str, object]]:
    start_at = time.time() + 1.5  # after every interpreter has imported covey
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), role, str(i), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, count + 1)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert "locked" not in err
        outputs.append(json.loads(out))
    return outputs


def test_two_processes_saving_overlapping_keys_store_each_key_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    outputs = _run_children(path, "save", 2)

    # every key was stored by exactly one of the processes
    assert sum(int(str(o["saved"])) for o in outputs) == 200
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT dedupe_key, COUNT(*) FROM covey_messages GROUP BY dedupe_key"
        ).fetchall()
    assert len(rows) == 200
    assert all(count == 1 for _, count in rows)


def test_two_processes_racing_for_one_shard_have_one_winner(tmp_path: Path) -> None:
    outputs = _run_children(tmp_path / "race.db", "acquire", 2)

    held = [o["held"] for o in outputs]
    assert sorted(len(h) for h in held) == [0, 1]  # type: ignore[arg-type]
    winner = next(h for h in held if h)
    assert winner == {"default:7": 1}
