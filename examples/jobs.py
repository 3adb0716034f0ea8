"""Background jobs on an in-process two-runner cluster (no database needed).

Shows a job submitted and its result, a flaky job retried until it succeeds, a
job that goes dead and is retried from the dead-letter, deduplicated submits,
and cancelling a scheduled and a running job.

    python examples/jobs.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

import covey
from covey.jobs import JobDefinition, Retry, exponential
from covey.testing import TestCluster


class Email(BaseModel):
    to: str


failures_left: dict[str, int] = {"flaky@example.com": 2, "down@example.com": 99}
runs: list[str] = []
cleaned_up: list[int] = []
started = asyncio.Event()
defs: dict[str, JobDefinition[Any]] = {}

FAST = Retry(max_attempts=3, backoff=exponential(0.05, 0.2), jitter=False)


def declare(cluster: covey.Cluster) -> None:
    @cluster.job("email.send", retry=FAST, timeout=5)
    async def send(job: covey.JobContext, msg: Email) -> str:
        runs.append(msg.to)
        if failures_left.get(msg.to, 0) > 0:
            failures_left[msg.to] -= 1
            raise ConnectionError(f"smtp down for {msg.to} (attempt {job.attempt})")
        return f"sent to {msg.to} on attempt {job.attempt}"

    @cluster.job("report.build")
    async def build(job: covey.JobContext, msg: Email) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cleaned_up.append(job.job_id)  # the handler sees the cancel and can clean up
            raise

    # every member declares the same jobs; keep the last one's (the client member's)
    defs["send"], defs["build"] = send, build


async def main() -> None:
    async with TestCluster(runners=2, configure=declare) as tc:
        jobs = tc.client_member.jobs
        send, build = defs["send"], defs["build"]

        handle = await send.submit(Email(to="ann@example.com"))
        print(f"submitted: {await handle.result(timeout=10)}")

        flaky = await send.submit(Email(to="flaky@example.com"))
        print(f"retried: {await flaky.result(timeout=10)}")

        down = await send.submit(Email(to="down@example.com"))
        try:
            await down.result(timeout=10)
        except covey.JobError as exc:
            print(f"dead: reason {exc.reason.value}")
        status = await down.status()
        print(f"dead job: state {status.state} after {status.attempts} attempts, "
              f"last error {status.last_error}")
        print(f"dead-letter holds {len(await jobs.dead_letters())} job(s)")
        failures_left["down@example.com"] = 0  # the mail server is back
        again = await jobs.retry_dead(down.id)
        print(f"retried from the dead-letter: {await again.result(timeout=10)}")
        print(f"dead-letter holds {len(await jobs.dead_letters())} job(s)")

        before = runs.count("welcome@example.com")
        handles = await asyncio.gather(*(
            send.submit(Email(to="welcome@example.com"), dedupe_key="welcome:42")
            for _ in range(5)))
        await handles[0].result(timeout=10)
        print(f"dedupe: 5 submits, {len({h.id for h in handles})} job, "
              f"{runs.count('welcome@example.com') - before} run")

        later = await send.submit(Email(to="later@example.com"), delay=60)
        print(f"scheduled job is {(await later.status()).state}")
        print(f"cancelled before it ran: {(await later.cancel()).state}")

        report = await build.submit(Email(to="boss@example.com"))
        await asyncio.wait_for(started.wait(), 10)
        print(f"long job is {(await report.status()).state}")
        final = await report.cancel()
        print(f"cancelled while running: {final.state}, "
              f"handler cleaned up: {report.id in cleaned_up}")
    print(f"later@example.com ran: {'later@example.com' in runs}")


if __name__ == "__main__":
    asyncio.run(main())
