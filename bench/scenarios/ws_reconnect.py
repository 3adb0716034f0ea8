"""WebSocket reconnect: pod A is SIGKILLed under 200 connected clients.

Two uvicorn pods of ``bench.apps.realtime_bench_app`` (runner embedded, one
scratch PostgreSQL database). A client process (``python -m
bench.apps.realtime_clients reconnect``) holds ``USERS`` clients of the
``Echo`` contract (``covey.realtime.connect`` with both pods' URLs, pod A's
first; token = user id ``u-0`` ... ``u-199``), all open on pod A. It is a
process of its own so that the reconnect storm and the sender do not share one
event loop (each would delay the other's timings).

The bench process is a client-only cluster member that sends ``RATE``
messages per second to the users in turn (``send_to_user(..., push="message",
id=<user>:<n>, store=True)``, each at its own time, at most
``SEND_CONCURRENCY`` in flight), from ``before_s`` seconds before the kill
until ``after_s`` seconds after every client is open on pod B; each send's
outcome is kept.

* ``reconnect_p50_s`` / ``reconnect_p99_s`` / ``reconnect_max_s``: per client,
  its first reconnect (``on_reconnect``; wall clock in the client process) -
  the kill (wall clock in the bench process right before ``SIGKILL``; same
  machine) (targets 1 / 5); ``null`` if a client never came back
  (``reconnected`` says how many did).
* ``lost``: messages whose send answered ``delivered`` or ``stored`` but that
  never reached the client's handler (target 0); ``lost_by_phase``;
  ``lost_sample``: a few of them (user, n, outcome, sent this many seconds
  after the kill: negative = before it);
  ``duplicates``: handler calls beyond the first for one message (after the
  client's ``mid`` dedupe; 0 expected); ``dropped``: sends answered
  ``dropped`` (none expected with ``store=True``).
* ``cpu_until_all_back_s``: CPU seconds of pod B, the client process and the
  bench process (the sender) from the kill until every client was back.
* ``outcomes``: sends per phase (``before`` the kill, ``during``: until every
  client is open on pod B, ``after``) and outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import covey
from covey.core import CoveyConfig

from ._realtime import SHARDS, Pod, cpu_seconds, get_json, pods
from ._runners import ROOT, SECRET, log, percentile, scratch_database, server_settings, wait_until

USERS = 200
#: messages per second, to the users in turn (5 per user per second)
RATE = 1000.0
SEND_CONCURRENCY = 100
#: seconds the receipt of every sent message is waited for, after the last send
SETTLE = 20.0


class ClientProcess:
    """The ws-reconnect client process: JSON lines out, commands in."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, urls: list[str], users: int) -> ClientProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.apps.realtime_clients", "reconnect", *urls,
            "--users", str(users), cwd=ROOT, env=env, limit=64 * 1024 * 1024,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(process)

    async def read(self, timeout: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the client process exited ({await self.process.wait()})")
        return dict(json.loads(line))

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@dataclass
class Sender:
    """Sends messages to the users in turn at ``RATE`` per second (each send in a
    task of its own at its own time, so sends are in flight whenever the kill
    comes); keeps each send's outcome."""

    member: covey.Cluster
    users: list[str]
    sent: list[tuple[str, int, str, float]] = field(default_factory=list)  # user, n, outcome, at
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, user: str, n: int, gate: asyncio.Semaphore) -> None:
        from bench.apps.realtime_bench_app import Note

        async with gate:
            at = time.time()
            try:
                outcome = await self.member.send_to_user(
                    user, Note(user=user, n=n, sent_at=at), push="message", id=f"{user}:{n}",
                    store=True)
            except Exception as exc:  # counted, not lost: the sender knows it failed
                self.failed.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            self.sent.append((user, n, outcome, at))

    async def run(self) -> int:
        """Send until :attr:`stop` is set; how many sends were started."""
        gate = asyncio.Semaphore(SEND_CONCURRENCY)
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        started = loop.time()
        count = 0
        try:
            while not self.stop.is_set():
                delay = started + count / RATE - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                    continue
                user, n = self.users[count % len(self.users)], count // len(self.users)
                task = asyncio.create_task(self.one(user, n, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                count += 1
        finally:
            await asyncio.gather(*tasks)
        return count


def phase_of(at: float, killed: float, back: float) -> str:
    return "before" if at < killed else "during" if at < back else "after"


async def measure(url: str, before: float, after: float) -> dict[str, Any]:
    async with pods(url, ["pod-a", "pod-b"]) as (pod_a, pod_b):
        clients = await ClientProcess.start([pod_a.ws, pod_b.ws], USERS)
        try:
            await clients.read(timeout=120)  # ready
            await wait_until(lambda: _users_on(pod_a, USERS), 30, interval=0.2)
            config = CoveyConfig(database_url=url, shards=SHARDS, cluster_secret=SECRET)
            async with covey.Cluster(config, client_only=True) as member:
                sender = Sender(member, [f"u-{i}" for i in range(USERS)])
                sending = asyncio.create_task(sender.run())
                try:
                    await asyncio.sleep(before)
                    log(f"{USERS} clients open on pod A, {len(sender.sent)} messages sent; "
                        "SIGKILL pod A...")
                    pids = {"pod_b": pod_b.process.pid, "clients": clients.process.pid}
                    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    own = time.process_time()
                    killed = time.time()
                    pod_a.process.send_signal(signal.SIGKILL)
                    back = await _all_back(clients, killed)
                    cpu = {name: round(cpu_seconds(pid) - cpu[name], 2)
                           for name, pid in pids.items()}
                    cpu["bench"] = round(time.process_time() - own, 2)
                    log(f"  every client open on pod B {back - killed:.2f} s after the kill; "
                        f"sending {after:g} s more")
                    await asyncio.sleep(after)
                finally:
                    sender.stop.set()
                    started = await sending
            expected = {(u, n) for u, n, outcome, _ in sender.sent if outcome != "dropped"}
            deadline = time.monotonic() + SETTLE
            while (await clients.ask("status"))["received"] < len(expected):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            report = await clients.ask("report")
        finally:
            await clients.stop()
    return {**summary(report, sender, killed, back, started), "cpu_until_all_back_s": cpu}


async def _users_on(pod: Pod, count: int) -> bool:
    return int((await get_json(pod, "/stats"))["users"]) == count


async def _all_back(clients: ClientProcess, killed: float, timeout: float = 60) -> float:
    """The wall time at which every client was open on the last URL (pod B)."""
    while time.time() - killed < timeout:
        if (await clients.ask("status"))["open_on_last"] == USERS:
            return time.time()
        await asyncio.sleep(0.05)
    return time.time()


def summary(report: dict[str, Any], sender: Sender, killed: float, back: float,
            started: int) -> dict[str, Any]:
    received: dict[str, list[int]] = report["received"]
    times = [min(t for t in stamps if t >= killed) - killed
             for stamps in report["reconnected"].values() if any(t >= killed for t in stamps)]
    everyone = len(times) == USERS
    outcomes: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    sample: list[tuple[str, int, str, float]] = []
    got = {user: Counter(ns) for user, ns in received.items()}
    for user, n, outcome, at in sender.sent:
        phase = phase_of(at, killed, back)
        outcomes[f"{phase}.{outcome}"] += 1
        if outcome != "dropped" and got.get(user, Counter())[n] == 0:
            lost[phase] += 1
            sample.append((user, n, outcome, round(at - killed, 4)))
    duplicates = sum(c - 1 for counts in got.values() for c in counts.values() if c > 1)
    log(f"  reconnect p50 {percentile(times, 0.5):.3f} s, p99 "
        f"{percentile(times, 0.99):.3f} s; lost {sum(lost.values())}, duplicates {duplicates}")
    return {
        "reconnect_p50_s": round(percentile(times, 0.5), 3) if everyone else None,
        "reconnect_p99_s": round(percentile(times, 0.99), 3) if everyone else None,
        "reconnect_max_s": round(max(times), 3) if everyone else None,
        "reconnect_min_s": round(min(times), 3) if times else None,
        "reconnected": len(times), "all_open_on_b_s": round(back - killed, 3),
        "lost": sum(lost.values()), "lost_by_phase": dict(lost), "lost_sample": sample[:5],
        "duplicates": duplicates,
        "dropped": sum(v for k, v in outcomes.items() if k.endswith(".dropped")),
        "send_errors": len(sender.failed), "send_error_sample": sender.failed[:3],
        "sent": len(sender.sent), "sends_started": started,
        "outcomes": dict(sorted(outcomes.items())),
        "client_states": dict(Counter(report["states"].values())),
    }


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    before, after = (2.0, 3.0) if quick else (5.0, 10.0)
    async with scratch_database() as url:
        result = await measure(url, before, after)
    result.update(
        scenario="ws-reconnect", quick=quick, pods=2, users=USERS, before_s=before,
        after_s=after, send_rate_per_s=RATE, send_concurrency=SEND_CONCURRENCY,
        cpus=os.cpu_count(), postgres=settings,
        client="covey.realtime.connect (msgpack, cap 5 s, both URLs) x 200 in one process",
        clock="kill: time.time() in the bench process before SIGKILL; reconnect: time.time() "
              "in on_reconnect of the client process; same machine",
        targets={"reconnect_p50_s": 1, "reconnect_p99_s": 5, "lost": 0})
    return result
