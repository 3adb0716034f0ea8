"""Shared pieces of the bad-input suite (issue 8): hostile values, and a ledger
that checks the rule for each one.

The rule, for every public entry point and every hostile value: the call fails
with a typed :class:`covey.ClusterError` whose ``reason`` says what is wrong and
which is not retryable (a caller mistake does not get better by trying again);
nothing was stored; and the process keeps serving (a good call right after
succeeds). A :class:`Ledger` runs one hostile call after another on the same
cluster and records every broken rule, so one run names all of them, one line
per value.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from covey.cluster import Cluster
from covey.core import ClusterError, CoveyConfig, Reason, RunnerAddress, ShardingOptions
from covey.entities import Entity
from covey.sharding import LocalNetwork, LocalTransport
from covey.storage import Storage
from covey.testing import TestCluster

T = TypeVar("T")
E = TypeVar("E", bound=Entity)

#: memory and SQLite always; PostgreSQL when the test server is up
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

KB = 1024
NUL = "a\x00b"
SURROGATE = "a\ud800b"  # a lone surrogate: not encodable as UTF-8
HUGE = "x" * (100 * KB)

#: strings no id or key may be (each with the label the ledger prints)
HOSTILE_STRINGS: list[tuple[str, str]] = [
    ("NUL", NUL),
    ("lone surrogate", SURROGATE),
    ("100 KB", HUGE),
]
#: values of the wrong type where a string is expected
WRONG_TYPES: list[tuple[str, object]] = [
    ("int", 42),
    ("None", None),
    ("bytes", b"id"),
    ("list", ["id"]),
]
#: numbers no delay, duration or interval may be
BAD_NUMBERS: list[tuple[str, object]] = [
    ("nan", float("nan")),
    ("inf", float("inf")),
    ("-inf", float("-inf")),
    ("-1", -1),
    ("str 'soon'", "soon"),
]
#: ids no stored message or job can have
BAD_IDS: list[tuple[str, object]] = [
    ("-1", -1),
    ("0", 0),
    ("2**63", 2**63),
    ("2**64", 2**64),
    ("str 'abc'", "abc"),
    ("str '123'", "123"),
    ("float 1.5", 1.5),
    ("None", None),
]

CALLER_MISTAKE = frozenset({Reason.INVALID_ARGUMENT})
PAYLOAD_MISTAKE = frozenset({Reason.PAYLOAD_INVALID, Reason.INVALID_ARGUMENT})


def too_large(reason: Reason) -> bool:
    """``frame_too_large`` or a more specific ``*_too_large`` reason if one is added."""
    return reason is Reason.FRAME_TOO_LARGE or reason.value.endswith("_too_large")


def deep(levels: int = 10_000) -> Any:
    """``levels`` of nested lists and dicts, built without recursion."""
    value: Any = "bottom"
    for level in range(levels):
        value = [value] if level % 2 else {"d": value}
    return value


def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store per test: memory, a SQLite file, or a PostgreSQL database."""
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'bad-input.db'}"
    return str(request.getfixturevalue("fresh_pg_database"))


class PgCluster:
    """The part of :class:`TestCluster` these tests use, on PostgreSQL.

    ``TestCluster`` shares one storage object between its members, which only
    works for memory and SQLite; here a runner and a client-only member each
    open their own PostgreSQL storage, as two processes would, and talk over
    the in-process transport.
    """

    def __init__(self, *entity_types: type[Entity], url: str, shards: int = 8,
                 configure: Callable[[Cluster], None] | None = None) -> None:
        options = ShardingOptions(
            heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
            lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=2.0, call_timeout=10.0)
        self.config = CoveyConfig(database_url=url, shards=shards, sharding=options)
        self._types = entity_types
        self._configure = configure
        self._network = LocalNetwork()
        self._members: list[Cluster] = []

    def _member(self, port: int, *, client_only: bool) -> Cluster:
        member = Cluster(self.config, client_only=client_only,
                         transport=LocalTransport(self._network, RunnerAddress("runner", port)))
        member.register(*self._types)
        if self._configure is not None:
            self._configure(member)
        self._members.append(member)
        return member

    async def __aenter__(self) -> PgCluster:
        self.runner = self._member(1, client_only=False)
        await self.runner.start()
        self.client_member = self._member(2, client_only=True)
        await self.client_member.start()
        self.storage: Storage = self.runner.storage
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # until the client routes every shard to the runner, which holds it
            for member in self._members:
                await member.sharding.refresh_membership()
            await self.runner.sharding.rebalance()
            expected = self.runner.sharding.assignment
            if (expected and self.client_member.sharding.assignment == expected
                    and set(self.runner.sharding.owned) == set(expected)):
                return self
            assert asyncio.get_running_loop().time() < deadline, "the cluster did not settle"
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc_info: object) -> None:
        for member in reversed(self._members):
            await member.stop()

    def client(self, entity_type: type[E], entity_id: str, **options: Any) -> E:
        return self.client_member.client(entity_type, entity_id, **options)


AnyCluster = TestCluster | PgCluster


def open_cluster(url: str, *entity_types: type[Entity],
                 configure: Callable[[Cluster], None] | None = None) -> AnyCluster:
    """One runner and a client-only member on the store ``url`` names."""
    if url.startswith("postgres"):
        return PgCluster(*entity_types, url=url, configure=configure)
    return TestCluster(*entity_types, runners=1, shards=8, database_url=url, configure=configure)


async def abandon(cluster: AnyCluster) -> None:
    """Close what a cluster that failed to start left open (a SQLite connection's
    thread would keep the test process alive)."""
    if isinstance(cluster, TestCluster):
        await cluster.storage.close()
        return
    for member in cluster._members:
        with contextlib.suppress(Exception):
            await member.stop()
        with contextlib.suppress(Exception):
            await member.storage.close()


async def stored_messages(storage: Storage) -> int:
    """How many messages the store holds, processed or not."""
    return (await storage.info()).messages_total


async def unprocessed_messages(storage: Storage) -> int:
    """How many stored messages still wait to be processed."""
    return (await storage.info()).messages_unprocessed


def draw(strategy: st.SearchStrategy[T], n: int) -> list[T]:
    """``n`` values from a hypothesis strategy (generation only: no shrinking, no
    example database), to feed a cluster that lives for the whole test."""
    found: list[T] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: T) -> None:
        found.append(value)

    collect()
    return found[:n]


def hostile_text() -> st.SearchStrategy[str]:
    """Text that carries at least one NUL or lone surrogate somewhere."""
    poison = st.sampled_from(["\x00", "\ud800", "\udfff", "\udc80"])
    text = st.text(max_size=20)
    return st.tuples(text, poison, text).map(lambda parts: "".join(parts))


def decent_text() -> st.SearchStrategy[str]:
    """Short, non-empty text any id may be: printable, no surrogates, no NUL."""
    return st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ClusterError):
        text = f"{type(exc).__name__}({exc.reason.value}, details={exc.details}): {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 240 else text[:237] + "..."


class Ledger:
    """Runs hostile calls and records, one line each, every rule they broke."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.broken: list[str] = []
        self.checked = 0

    def fail(self, label: str, what: str) -> None:
        self.broken.append(f"[{self.where}] {label}: {what}")

    async def refused(
        self,
        label: str,
        call: Callable[[], Awaitable[object]],
        *,
        reasons: Collection[Reason] | Callable[[Reason], bool],
        stored: Callable[[], Awaitable[int]] | None,
        serving: Callable[[], Awaitable[object]] | None,
        guard: float = 15.0,
    ) -> ClusterError | None:
        """Run ``call``; check typed, expected reason, not retryable, nothing stored,
        still serving. Returns the error when it was a ClusterError."""
        self.checked += 1
        before = await stored() if stored is not None else 0
        error: ClusterError | None = None
        try:
            await asyncio.wait_for(call(), guard)
        except ClusterError as exc:
            error = exc
            ok = reasons(exc.reason) if callable(reasons) else exc.reason in reasons
            if not ok:
                self.fail(label, f"wrong reason: {describe(exc)}")
            if exc.retryable:
                self.fail(label, f"retryable: {describe(exc)}")
        except TimeoutError:
            self.fail(label, f"no answer within {guard} s (hangs)")
        except Exception as exc:
            self.fail(label, f"untyped error: {describe(exc)}")
        else:
            self.fail(label, "accepted")
        if stored is not None:
            try:
                after = await stored()
            except Exception as exc:  # the refused value poisoned the store: stop here
                self.fail(label, f"the store cannot be read afterwards: {describe(exc)}")
                self.check()
                raise
            if after != before:
                self.fail(label, f"stored rows changed anyway ({before} -> {after})")
        if serving is not None:
            try:
                await asyncio.wait_for(serving(), guard)
            except Exception as exc:
                self.fail(label, f"not serving afterwards: {describe(exc)}")
        return error

    def check(self) -> None:
        assert self.checked, "the ledger checked nothing"
        assert not self.broken, f"{len(self.broken)} broken rule(s):\n" + "\n".join(self.broken)
