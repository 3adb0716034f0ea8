"""The covey demo: the embedded store at work, with no settings.

Opens the default storage (``sqlite:///covey.db``, or ``COVEY_DATABASE_URL``),
registers a runner, takes its shards, then pushes persisted messages through the
full path a runner uses — store, lease, fenced reply — and prints what the store
holds and how fast that went.

Run it with ``make demo`` (or ``python examples/demo.py [--messages N]``).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.progress import Progress

from covey.cli._main import info_table
from covey.core import (
    CoveyConfig,
    EntityAddress,
    MsgpackCodec,
    RunnerAddress,
    ShardId,
    SnowflakeGenerator,
    shard_for,
)
from covey.storage import Fence, Message, Reply, Saved, open_storage

console = Console()


async def run(messages: int, producers: int) -> int:
    config = CoveyConfig.from_env()
    codec = MsgpackCodec()
    runner = RunnerAddress("127.0.0.1", 7400)
    async with open_storage(config) as storage:
        machine_id = await storage.runners.register(runner)
        snowflakes = SnowflakeGenerator(machine_id)
        all_shards = [ShardId("default", i) for i in range(1, config.shards + 1)]
        epochs = await storage.runners.acquire(runner, all_shards)
        console.print(
            f"runner [bold]{runner}[/bold] registered as machine {machine_id}, "
            f"owns {len(epochs)}/{len(all_shards)} shards of {config.database_url}"
        )
        done: dict[int, asyncio.Future[bytes]] = {}
        todo = iter(range(messages))

        async def producer(progress: Progress, task: int) -> None:
            for n in todo:
                account = f"acct-{n % 50}"
                message = Message(
                    id=snowflakes.next_id(),
                    address=EntityAddress("Account", account, shard_for(account, config.shards)),
                    tag="deposit",
                    payload=codec.encode({"txn": f"demo-{n}", "amount": 1}),
                    primary_key=f"demo-{snowflakes.next_id()}",
                )
                waiter = asyncio.get_running_loop().create_future()
                done[message.id] = waiter
                result = await storage.messages.save_request(message)
                assert isinstance(result, Saved)
                await waiter
                progress.advance(task)

        async def consumer(stop: asyncio.Event) -> None:
            while not stop.is_set():
                batch = await storage.messages.unprocessed(list(epochs), limit=256)
                if not batch:
                    await asyncio.sleep(0.001)
                    continue
                await asyncio.gather(*(
                    storage.messages.save_reply(
                        Reply(m.id, codec.encode("ok")),
                        Fence(m.address.shard, epochs[m.address.shard]),
                    )
                    for m in batch
                ))
                for m in batch:
                    done.pop(m.id).set_result(b"ok")

        started = time.perf_counter()
        stop = asyncio.Event()
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("persisted round trips", total=messages)
            consuming = asyncio.create_task(consumer(stop))
            try:
                await asyncio.gather(*(producer(progress, task) for _ in range(producers)))
            finally:
                stop.set()
                await consuming
        elapsed = time.perf_counter() - started
        console.print(info_table(await storage.info(), title="store after the run"))
        purged = await storage.messages.purge(before=time.time() + 1)
        await storage.runners.release_all(runner)
        await storage.runners.unregister(runner)
        rate = messages / elapsed
        console.print(
            f"[green]{messages} messages[/green] stored, leased and completed with fenced "
            f"replies in {elapsed:.2f} s: [bold]{rate:,.0f} round trips/s[/bold] "
            f"({producers} concurrent producers); purged {purged} processed messages."
        )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--producers", type=int, default=32)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(run(args.messages, args.producers)))


if __name__ == "__main__":
    main()
