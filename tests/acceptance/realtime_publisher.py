"""A third process of the real-time acceptance tests: a client-only covey member
that publishes stream items or sends user messages, printing JSON lines.

::

    python -m tests.acceptance.realtime_publisher publish STREAM --count N
        [--rate PER_S] [--size BYTES] [--concurrency C] [--progress EVERY]
    python -m tests.acceptance.realtime_publisher send USER --count N [--first SEQ]
        [--rate PER_S] [--store]

``COVEY_*`` configure the member (``COVEY_DATABASE_URL``, ``COVEY_CLUSTER_SECRET``,
``COVEY_SHARDS``); it hosts nothing and has no runner port. It prints
``{"ready": true}`` once joined; ``publish`` then prints ``{"published": k,
"cursor": "<epoch>:<position>"}`` every ``--progress`` items and
``{"done": N, "seconds": s}``; ``send`` prints ``{"seq": n, "outcome": ...}``
per message and ``{"done": N, ...}``.

Items are ``{"n": <0..N-1>, "pad": "x..."}`` (``--size`` bytes of padding);
notices are :class:`~tests.acceptance.realtime_pod.Notice` with ``seq`` from
``--first`` on and the message id ``notice-<seq>``, sent with push ``notice``.
:class:`Publisher` runs it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import covey

from ._pods import ROOT
from .realtime_pod import Notice, covey_env


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def paced(count: int, rate: float, concurrency: int,
                work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``work(0..count-1)``, ``concurrency`` at a time, starting at most ``rate``
    per second (0: as fast as they go). Each worker takes the next number, so with
    one worker they run in order."""
    start = time.monotonic()
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            if rate > 0:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await work(n)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def publish(cluster: covey.Cluster, args: argparse.Namespace) -> None:
    pad = "x" * args.size
    done = 0

    async def one(n: int) -> None:
        nonlocal done
        cursor = await cluster.streams.publish(args.stream, {"n": n, "pad": pad})
        done += 1
        if done % args.progress == 0:
            say(published=done, cursor=str(cursor))

    start = time.monotonic()
    await paced(args.count, args.rate, args.concurrency, one)
    say(done=done, seconds=round(time.monotonic() - start, 3))


async def send(cluster: covey.Cluster, args: argparse.Namespace) -> None:
    outcomes: dict[str, int] = {}

    async def one(n: int) -> None:
        seq = args.first + n
        outcome = await cluster.send_to_user(args.user, Notice(seq=seq, sender="publisher"),
                                             push="notice", id=f"notice-{seq}",
                                             store=args.store)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        say(seq=seq, outcome=outcome)

    await paced(args.count, args.rate, 1, one)
    say(done=args.count, outcomes=outcomes)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="realtime_publisher")
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish", help="publish items to a stream")
    pub.add_argument("stream")
    pub.add_argument("--count", type=int, required=True)
    pub.add_argument("--rate", type=float, default=0.0, help="items per second (0: no limit)")
    pub.add_argument("--size", type=int, default=0, help="bytes of padding per item")
    pub.add_argument("--concurrency", type=int, default=1)
    pub.add_argument("--progress", type=int, default=100)
    snd = commands.add_parser("send", help="send notices to a user")
    snd.add_argument("user")
    snd.add_argument("--count", type=int, required=True)
    snd.add_argument("--first", type=int, default=0)
    snd.add_argument("--rate", type=float, default=0.0)
    snd.add_argument("--store", action="store_true")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cluster = covey.Cluster.from_env(client_only=True)
    async with cluster:
        say(ready=True)
        await (publish if args.command == "publish" else send)(cluster, args)


class Publisher:
    """This module in a process of its own (a test's handle); its JSON lines as they come.

    Args:
        database_url: the test's database.
        args: the command line (``"publish", "orders", "--count", "300"``).
    """

    def __init__(self, database_url: str, *args: str) -> None:
        self.database_url = database_url
        self.args = args
        self.lines: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Publisher:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.acceptance.realtime_publisher", *self.args,
            cwd=ROOT, env=covey_env(self.database_url), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    async def wait(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Its JSON lines once it exited 0 (an assertion with its output otherwise)."""
        assert self._process is not None and self._reader is not None
        async with asyncio.timeout(timeout):
            await self._reader
            code = await self._process.wait()
        assert code == 0, "publisher failed:\n" + "\n".join(self.output[-40:])
        return self.lines

    async def stop(self) -> None:
        """Kill it if it still runs (a test's cleanup)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
