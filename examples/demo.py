"""The covey demo: a bank on three runner processes, one killed half-way.

What it shows, on the embedded SQLite store with no settings:

1. three ``covey run bank:cluster`` processes (``examples/bank.py``) share the
   shards of a bank whose ``Account`` entities keep their balance as durable
   state and record each persisted, idempotent deposit in the bank's own
   ``deposits`` table through ``ctx.transaction`` (no ledger, no dedupe code);
2. this process, a client-only member of the same cluster, sends thousands of
   deposits to many accounts;
3. half-way it SIGKILLs one runner and shows the survivors take over its shards;
4. at the end it checks, from what is stored only, that every deposit was
   applied exactly once: the ``deposits`` table has **no unique constraint**, so
   it counts rows, duplicates and missing deposits and prints the counts; every
   stored balance (``cluster.state_of``) equals the sum of its deposits. It
   prints PASS (exit 0) or what went wrong (exit 1).

Run it with ``make demo`` (or ``python examples/demo.py [--deposits N --accounts N]``).
Everything it writes lives in ``.demo/`` (``--workdir``), wiped at start; runner
logs stay there for reading. See ``docs/demo.md`` for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bank import Account, AccountState, Deposit, create_tables  # examples/bank.py
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import covey
from covey.cli import info_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
console = Console()

# On SQLite there are no advisory locks: a runner that dies without leaving is
# only noticed when its heartbeat is older than the runner TTL (default 6 s).
# The demo heartbeats every 0.25 s and gives up on a runner after 2 s of
# silence, so the SIGKILLed runner's shards move within about 2-3 s.
# (On PostgreSQL its locks vanish with its session, so it does not need this.)
DEMO_SETTINGS = {
    "COVEY_SHARDS": "300",
    "COVEY_RUNNER_PORT": "0",
    "COVEY_CLUSTER_SECRET": "covey-demo-secret",
    "COVEY_SHARDING_HEARTBEAT_INTERVAL": "0.25",
    "COVEY_SHARDING_RUNNER_TTL": "2",
    "COVEY_SHARDING_SHUTDOWN_GRACE": "5",
}
SEND_ATTEMPTS = 5
RESEND_EVERY = 25  # every 25th deposit is sent twice, like a client retrying


# ---- runner processes -------------------------------------------------------


@dataclass
class Runner:
    """One ``covey run bank:cluster`` child process."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def ready_address(self) -> str | None:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("covey runner ") and line.endswith(" ready"):
                return line.split()[2]
        return None


@dataclass
class Runners:
    """The demo's runner processes; :meth:`close` always leaves none behind."""

    env: dict[str, str]
    workdir: Path
    all: list[Runner] = field(default_factory=list)

    def start(self, count: int) -> None:
        for n in range(1, count + 1):
            log = self.workdir / f"runner-{n}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "covey", "run", "bank:cluster", "--log-level", "INFO"],
                    cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                )
            self.all.append(Runner(f"runner-{n}", process, log))

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for runner in self.all:
            while not (address := runner.ready_address()):
                if not runner.alive or time.monotonic() > deadline:
                    raise DemoFailure(f"{runner.name} did not start; its log {runner.log}:\n"
                                      + runner.log.read_text(errors="replace")[-3000:])
                await asyncio.sleep(0.05)
            runner.address = address

    def by_address(self, address: str) -> Runner | None:
        return next((r for r in self.all if r.address == address), None)

    def stop(self, timeout: float = 15) -> dict[str, int | None]:
        """SIGTERM the live runners (graceful leave), SIGKILL what outlives ``timeout``."""
        live = [r for r in self.all if r.alive]
        for runner in live:
            runner.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for runner in live:
            try:
                codes[runner.name] = runner.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                runner.process.kill()
                codes[runner.name] = None
        return codes

    async def watch(self) -> None:
        """Fail fast if a runner the demo did not kill exits."""
        while True:
            for runner in self.all:
                if not runner.alive and not runner.killed:
                    raise DemoFailure(f"{runner.name} exited unexpectedly (exit code "
                                      f"{runner.process.returncode}); see {runner.log}")
            await asyncio.sleep(0.2)

    def close(self) -> None:
        """On any exit path: stop what still runs (gracefully if it can), reap all."""
        self.stop(timeout=5)
        for runner in self.all:
            runner.process.wait()


class DemoFailure(Exception):
    """Something the demo checks went wrong; the message says what."""


# ---- the cluster as the driver sees it -------------------------------------


async def where_accounts(cluster: covey.Cluster, accounts: list[str]) -> dict[str, str]:
    """Which runner hosts each account (waits for accounts whose shard is moving)."""
    hosts = await asyncio.gather(*(cluster.client(Account, a).where() for a in accounts))
    return dict(zip(accounts, hosts, strict=True))


def shard_counts(cluster: covey.Cluster) -> Counter[str]:
    return Counter(str(owner) for owner in cluster.sharding.assignment.values())


def placement_table(title: str, runners: Runners, cluster: covey.Cluster,
                    hosts: dict[str, str]) -> Table:
    shards = shard_counts(cluster)
    accounts = Counter(hosts.values())
    table = Table(title=title)
    for column in ("runner", "pid", "address", "state", "shards", "accounts"):
        table.add_column(column, justify="right" if column in ("shards", "accounts") else "left")
    for r in runners.all:
        state = "[green]live[/green]" if r.alive else "[red]killed[/red]"
        table.add_row(r.name, str(r.process.pid), r.address, state,
                      str(shards[r.address]), str(accounts[r.address]))
    return table


async def wait_for_membership(cluster: covey.Cluster, expected: set[str],
                              timeout: float = 30) -> None:
    """Until the driver's view of the live runners is exactly ``expected``."""
    deadline = time.monotonic() + timeout
    while {str(r.address) for r in cluster.sharding.live} != expected:
        if time.monotonic() > deadline:
            live = sorted(str(r.address) for r in cluster.sharding.live)
            raise DemoFailure(f"membership never became {sorted(expected)}; it is {live}")
        await cluster.sharding.wait_for_change(0.1)


# ---- the workload -----------------------------------------------------------


@dataclass(frozen=True)
class Txn:
    txn_id: str
    account: str
    amount: int


def make_txns(deposits: int, accounts: int, seed: int = 7) -> list[Txn]:
    rng = random.Random(seed)
    return [Txn(f"txn-{n:06d}", f"acct-{rng.randrange(accounts):03d}", rng.randint(1, 100))
            for n in range(deposits)]


@dataclass
class Tally:
    """What the driver saw while sending."""

    done: int = 0
    retries: int = 0
    resent: int = 0
    resend_mismatches: list[str] = field(default_factory=list)
    half_way: asyncio.Event = field(default_factory=asyncio.Event)


async def send(cluster: covey.Cluster, txn: Txn, tally: Tally) -> int:
    """One deposit; a retryable error is retried with the same txn id (safe: idempotent)."""
    client = cluster.client(Account, txn.account)
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            return await client.deposit(Deposit(txn_id=txn.txn_id, amount=txn.amount))
        except covey.ClusterError as exc:
            if not exc.retryable or attempt == SEND_ATTEMPTS:
                raise DemoFailure(f"deposit {txn.txn_id} failed: {exc!r}") from exc
            tally.retries += 1
    raise AssertionError("unreachable")


async def deposit_all(cluster: covey.Cluster, txns: list[Txn], concurrency: int,
                      progress: Progress, tally: Tally) -> None:
    task = progress.add_task("persisted deposits", total=len(txns))
    todo: Iterator[tuple[int, Txn]] = enumerate(txns)

    async def worker() -> None:
        for n, txn in todo:
            first = await send(cluster, txn, tally)
            if n % RESEND_EVERY == 0:
                tally.resent += 1
                again = await send(cluster, txn, tally)
                if again != first:
                    tally.resend_mismatches.append(f"{txn.txn_id}: {first} then {again}")
            tally.done += 1
            progress.advance(task)
            if tally.done * 2 >= len(txns):
                tally.half_way.set()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---- the crash --------------------------------------------------------------


@dataclass
class Failover:
    victim: Runner
    shards: int
    accounts: int
    noticed_after: float = 0.0
    served_after: float = 0.0


async def kill_and_watch(cluster: covey.Cluster, runners: Runners, hosts: dict[str, str],
                         tally: Tally, out: Console) -> Failover:
    """At half-way, SIGKILL the runner hosting most accounts; time its shards moving."""
    await tally.half_way.wait()
    victim = runners.by_address(Counter(hosts.values()).most_common(1)[0][0])
    assert victim is not None
    orphans = [a for a, host in hosts.items() if host == victim.address]
    failover = Failover(victim, shard_counts(cluster)[victim.address], len(orphans))
    killed_at = time.monotonic()
    victim.kill()
    out.print(f"[bold red]SIGKILL[/bold red] {victim.name} (pid {victim.process.pid}, "
              f"{victim.address}) after {tally.done} deposits: it held "
              f"[bold]{failover.shards}[/bold] shards and {failover.accounts} accounts")
    survivors = {r.address for r in runners.all if r.alive}
    await wait_for_membership(cluster, survivors)
    failover.noticed_after = time.monotonic() - killed_at
    out.print(f"  membership dropped {victim.name} after {failover.noticed_after:.2f} s "
              f"(heartbeat older than the runner TTL); its shards are reassigned")
    moved = await where_accounts(cluster, orphans)
    failover.served_after = time.monotonic() - killed_at
    out.print(f"  all {len(orphans)} of its accounts answer again, from "
              f"{', '.join(sorted(set(moved.values())))}, {failover.served_after:.2f} s "
              f"after the kill")
    return failover


# ---- the check --------------------------------------------------------------


@dataclass
class Verdict:
    problems: list[str]
    handler_runs: int
    reruns: int
    reruns_by_victim: int


@dataclass(frozen=True)
class Effects:
    """What the bank's ``deposits`` table (no unique constraint) holds after the run."""

    rows: dict[str, list[tuple[str, int]]]  # txn id -> every (account, amount) row
    total: int
    duplicates: int  # txn ids with more than one row
    missing: int
    unknown: int


def read_effects(store: Path, txns: list[Txn]) -> Effects:
    rows: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
    with contextlib.closing(sqlite3.connect(store)) as db:
        for txn_id, account, amount in db.execute("SELECT txn_id, account, amount FROM deposits"):
            rows[txn_id].append((account, amount))
        (duplicates,) = db.execute("SELECT count(*) FROM (SELECT txn_id FROM deposits"
                                   " GROUP BY txn_id HAVING count(*) > 1)").fetchone()
    expected = {t.txn_id for t in txns}
    return Effects(dict(rows), sum(map(len, rows.values())), int(duplicates),
                   len(expected - rows.keys()), len(rows.keys() - expected))


def read_runs(path: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute("SELECT txn_id, runner FROM runs"))


def check_effects(txns: list[Txn], effects: Effects) -> list[str]:
    problems = []
    if effects.duplicates:
        problems.append(f"{effects.duplicates} deposits were applied more than once")
    if effects.missing:
        problems.append(f"{effects.missing} deposits are missing from the deposits table")
    if effects.unknown:
        problems.append(f"{effects.unknown} unknown transactions in the deposits table")
    wrong = [t.txn_id for t in txns if any(row != (t.account, t.amount)
                                           for row in effects.rows.get(t.txn_id, []))]
    if wrong:
        problems.append(f"{len(wrong)} deposit rows with a wrong account or amount, "
                        f"e.g. {wrong[0]}")
    return problems


def check_balances(txns: list[Txn], durable: dict[str, AccountState | None],
                   live: dict[str, int]) -> list[str]:
    expected: defaultdict[str, int] = defaultdict(int)
    for t in txns:
        expected[t.account] += t.amount
    problems = []
    for account in sorted(expected):
        state = durable.get(account)
        stored = state.balance if state is not None else None
        if stored != expected[account]:
            problems.append(f"{account}: stored balance {stored}, expected {expected[account]}")
        if live.get(account) != expected[account]:
            problems.append(f"{account}: live balance {live.get(account)}, "
                            f"expected {expected[account]}")
    return problems[:10]


def check_runs(runs: list[tuple[str, str]], victim: str) -> tuple[list[str], int, int]:
    """Handler re-runs are only allowed for deposits the killed runner had started."""
    by_txn: defaultdict[str, list[str]] = defaultdict(list)
    for txn_id, runner in runs:
        by_txn[txn_id].append(runner)
    rerun = {t: rs for t, rs in by_txn.items() if len(rs) > 1}
    by_victim = {t for t, rs in rerun.items() if victim in rs}
    unexplained = sorted(rerun.keys() - by_victim)
    problems = [f"{len(unexplained)} deposits ran twice without a crash, e.g. {unexplained[0]}"
                ] if unexplained else []
    return problems, len(rerun), len(by_victim)


async def check_conflict(cluster: covey.Cluster, txn: Txn) -> list[str]:
    """A retry of ``txn`` with another amount must be refused, not answered."""
    forged = Deposit(txn_id=txn.txn_id, amount=txn.amount + 1)
    try:
        reply = await cluster.client(Account, txn.account).deposit(forged)
    except covey.ClusterError as exc:
        if exc.reason == "idempotency_conflict":
            console.print(f"{txn.txn_id} sent again with another amount: refused with "
                          f"[bold]{exc.reason}[/bold] (the stored reply is not returned)")
            return []
        return [f"{txn.txn_id} with another amount failed with {exc.reason}, "
                "not idempotency_conflict"]
    return [f"{txn.txn_id} with another amount was answered ({reply}), not refused"]


def effects_table(txns: list[Txn], effects: Effects, runs: int) -> Table:
    table = Table(title="the bank's deposits table (no unique constraint)")
    for column in ("deposits sent", "rows", "duplicates", "missing", "handler runs"):
        table.add_column(column, justify="right")
    table.add_row(str(len(txns)), str(effects.total), str(effects.duplicates),
                  str(effects.missing), str(runs))
    return table


async def verify(cluster: covey.Cluster, txns: list[Txn], paths: tuple[Path, Path],
                 failover: Failover, tally: Tally) -> Verdict:
    store, runs_path = paths
    accounts = sorted({t.account for t in txns})
    # the stored balances, read from storage without activating the accounts
    durable = await asyncio.gather(*(cluster.state_of(Account, a) for a in accounts))
    live = await asyncio.gather(*(cluster.client(Account, a).balance() for a in accounts))
    effects, runs = read_effects(store, txns), read_runs(runs_path)
    problems = check_effects(txns, effects)
    problems += check_balances(txns, dict(zip(accounts, durable, strict=True)),
                               dict(zip(accounts, live, strict=True)))
    run_problems, reruns, by_victim = check_runs(runs, failover.victim.address)
    problems += run_problems
    problems += [f"a resent deposit got a different reply: {m}"
                 for m in tally.resend_mismatches[:5]]
    problems += await check_conflict(cluster, txns[0])
    info = await cluster.storage.info()
    if info.messages_unprocessed:
        problems.append(f"{info.messages_unprocessed} persisted messages still unprocessed")
    if info.messages_total != len(txns):
        problems.append(f"covey stored {info.messages_total} messages for {len(txns)} deposits")
    console.print(info_table(info, title="covey's store after the run"))
    console.print(effects_table(txns, effects, len(runs)))
    return Verdict(problems, len(runs), reruns, by_victim)


# ---- putting it together ----------------------------------------------------


def prepare(workdir: Path) -> dict[str, str]:
    """A fresh work directory and the environment of every demo process."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update(DEMO_SETTINGS)
    store, runs = workdir / "covey-demo.db", workdir / "bank-runs.db"
    env["COVEY_DATABASE_URL"] = f"sqlite:///{store}"
    env["BANK_RUNS"] = str(runs)
    create_tables(str(store), str(runs))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_deposits(cluster: covey.Cluster, runners: Runners, hosts: dict[str, str],
                       txns: list[Txn], concurrency: int) -> tuple[Tally, Failover, float]:
    tally = Tally()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        try:
            async with asyncio.TaskGroup() as tasks:
                watchdog = tasks.create_task(runners.watch())
                crash = tasks.create_task(kill_and_watch(cluster, runners, hosts, tally,
                                                         progress.console))
                await deposit_all(cluster, txns, concurrency, progress, tally)
                failover = await crash
                watchdog.cancel()
        except* DemoFailure as failures:
            raise failures.exceptions[0] from None
    return tally, failover, time.monotonic() - started


def report(txns: list[Txn], tally: Tally, failover: Failover, verdict: Verdict,
           elapsed: float) -> None:
    console.print(
        f"{len(txns)} deposits ({tally.resent} of them sent twice) in {elapsed:.2f} s: "
        f"[bold]{len(txns) / elapsed:,.0f} deposits/s[/bold] including the failover; "
        f"client retries: {tally.retries}"
    )
    victim = failover.victim.name
    if verdict.reruns:
        runs = (f"{verdict.reruns} deposit(s) had started on {victim} when it died and ran "
                "again on a survivor; their first run never committed, so each was "
                "applied once")
    else:
        runs = f"no deposit was mid-handler on {victim} when it died, so none ran twice"
    console.print(f"handler runs: {verdict.handler_runs} for {len(txns)} deposits; {runs}")
    console.print(
        f"[dim]{failover.victim.name}'s accounts were loaded again on the survivors from "
        "their last committed state; nothing in the bank rebuilds or deduplicates.[/dim]"
    )


async def run(args: argparse.Namespace, runners: Runners) -> int:
    txns = make_txns(args.deposits, args.accounts)
    accounts = sorted({t.account for t in txns})
    runners.start(args.runners)
    await runners.wait_ready()
    config = covey.CoveyConfig.from_env(runners.env)
    async with covey.Cluster(config, client_only=True) as cluster:
        await wait_for_membership(cluster, {r.address for r in runners.all})
        hosts = await where_accounts(cluster, accounts)
        console.print(placement_table(f"{args.runners} runners, {config.shards} shards, "
                                      f"{len(accounts)} accounts", runners, cluster, hosts))
        tally, failover, elapsed = await run_deposits(cluster, runners, hosts, txns,
                                                      args.concurrency)
        after = await where_accounts(cluster, accounts)
        console.print(placement_table("after the failover", runners, cluster, after))
        paths = (Path(runners.env["COVEY_DATABASE_URL"].removeprefix("sqlite:///")),
                 Path(runners.env["BANK_RUNS"]))
        verdict = await verify(cluster, txns, paths, failover, tally)
    report(txns, tally, failover, verdict, elapsed)
    return finish(runners, verdict, len(txns))


def finish(runners: Runners, verdict: Verdict, deposits: int) -> int:
    stopping = time.monotonic()
    codes = runners.stop()
    console.print(f"stopped the survivors with SIGTERM in {time.monotonic() - stopping:.2f} s "
                  f"(exit codes {codes})")
    if any(code != 0 for code in codes.values()):
        verdict.problems.append(f"a survivor did not stop cleanly: {codes}")
    if verdict.problems:
        for problem in verdict.problems:
            console.print(f"[red]problem:[/red] {problem}")
        console.print(f"[bold red]FAIL[/bold red]: see above and the runner logs in "
                      f"{runners.workdir}")
        return 1
    console.print(f"[bold green]PASS[/bold green]: all {deposits} deposits applied exactly "
                  "once across a runner crash")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deposits", type=int, default=3000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    args = parser.parse_args()
    if args.runners < 2:
        parser.error("--runners must be at least 2 (one of them is killed)")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])
    runners = Runners(prepare(args.workdir.resolve()), args.workdir.resolve())
    started = time.monotonic()
    try:
        code = asyncio.run(run(args, runners))
    except DemoFailure as exc:
        console.print(f"[bold red]FAIL[/bold red]: {exc}")
        code = 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        code = 130
    finally:
        runners.close()
    console.print(f"[dim]demo took {time.monotonic() - started:.1f} s; runner logs in "
                  f"{runners.workdir}[/dim]")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
