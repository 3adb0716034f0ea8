"""Bad input at the entity entry points (issue 8): typed, not retryable, nothing
stored, still serving — on memory, SQLite and PostgreSQL.

Each test starts one cluster and drives it with a list of hostile values through
the typed client (``cluster.client(Entity, id)``), volatile and persisted, and
inside the application's own transaction on PostgreSQL. A :class:`Ledger`
checks the rule for every value and reports all broken rules at once.

The other entry points: ``test_bad_input_jobs.py`` (job submit, status, cron and
singleton declarations), ``test_bad_input_edges.py`` (CLI, ASGI middleware),
``test_bad_input_storage.py`` (the storage contracts called directly).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel, Field

import covey
from covey.core import Reason

from ._bad_input import (
    BACKENDS,
    CALLER_MISTAKE,
    HOSTILE_STRINGS,
    PAYLOAD_MISTAKE,
    WRONG_TYPES,
    AnyCluster,
    Ledger,
    backend_url,
    decent_text,
    deep,
    draw,
    hostile_text,
    open_cluster,
    stored_messages,
    too_large,
    unprocessed_messages,
)

#: handler runs, so a test can tell that a refused call never ran
RAN: list[tuple[str, str]] = []
_keys = itertools.count(1)


class Deposit(BaseModel):
    key: str
    amount: float = Field(ge=0, allow_inf_nan=False)
    count: int = Field(default=1, ge=1)
    note: Any = None  # free-form: deep nesting and size land here


class Vault(covey.Entity, type="BadInputVault"):
    total: float = 0.0

    @covey.rpc(persisted=True, primary_key=lambda d: d.key)
    async def deposit(self, cmd: Deposit) -> float:
        RAN.append((self.ctx.entity_id, cmd.key))
        self.total += cmd.amount
        return self.total

    @covey.rpc(persisted=True)
    async def record(self, cmd: Deposit) -> float:
        RAN.append((self.ctx.entity_id, cmd.key))
        return cmd.amount

    @covey.rpc
    async def peek(self, cmd: Deposit) -> float:
        RAN.append((self.ctx.entity_id, cmd.key))
        return cmd.amount

    @covey.rpc
    async def total_of(self) -> float:
        return self.total


def good(amount: float = 1.0, **fields: Any) -> Deposit:
    return Deposit(key=f"good-{next(_keys)}", amount=amount, **fields)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(str(request.param), tmp_path, request)


@pytest.fixture
async def tc(url: str) -> AsyncIterator[AnyCluster]:
    async with open_cluster(url, Vault) as cluster:
        yield cluster


def probe(tc: AnyCluster, where: str) -> tuple[Ledger, Callable[[], Awaitable[int]],
                                                  Callable[[], Awaitable[object]]]:
    """A ledger, the stored-message count and a good persisted + volatile call."""

    async def serving() -> None:
        vault = tc.client(Vault, "good-vault", timeout=5.0)
        assert await vault.deposit(good()) >= 1.0
        assert await vault.peek(good(amount=2.0)) == 2.0

    return Ledger(where), lambda: stored_messages(tc.storage), serving


async def test_entity_ids_are_refused(tc: AnyCluster) -> None:
    ledger, stored, serving = probe(tc, tc.storage.backend)
    ran = len(RAN)
    for label, bad in [*HOSTILE_STRINGS, *WRONG_TYPES]:
        for rpc in ("deposit", "record", "peek", "total_of"):
            def call(bad: Any = bad, rpc: str = rpc) -> Awaitable[object]:
                client = tc.client(Vault, bad, timeout=1.5)
                method = getattr(client, rpc)
                return method() if rpc == "total_of" else method(good())

            await ledger.refused(f"entity id {label} via {rpc}", call,
                                 reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    ran_for = {repr(e)[:40] for e, _ in RAN[ran:] if e != "good-vault"}
    if ran_for:
        ledger.fail("handlers", f"ran for refused ids {sorted(ran_for)}")
    ledger.check()


async def test_primary_keys_are_refused(tc: AnyCluster) -> None:
    ledger, stored, serving = probe(tc, tc.storage.backend)
    keys: list[tuple[str, object]] = [*HOSTILE_STRINGS, ("10 MB", "k" * (10 * 1024 * 1024))]
    for label, bad in keys:
        await ledger.refused(
            f"primary key {label}",
            lambda bad=bad: tc.client(Vault, "v1", timeout=1.5).deposit(
                Deposit.model_construct(key=bad, amount=1.0, count=1, note=None)),
            reasons=lambda r: r in CALLER_MISTAKE or too_large(r),
            stored=stored, serving=serving)
    ledger.check()


async def test_hypothesis_ids_with_nul_or_surrogates_are_refused(tc: AnyCluster) -> None:
    ledger, stored, serving = probe(tc, tc.storage.backend)
    for bad in draw(hostile_text(), 8):
        await ledger.refused(f"entity id {bad!r}",
                             lambda bad=bad: tc.client(Vault, bad, timeout=1.5).deposit(good()),
                             reasons=CALLER_MISTAKE, stored=stored, serving=None)
        await ledger.refused(f"primary key {bad!r}",
                             lambda bad=bad: tc.client(Vault, "v2", timeout=1.5).deposit(
                                 Deposit(key=bad, amount=1.0)),
                             reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    ledger.check()


async def test_hypothesis_decent_ids_work(tc: AnyCluster) -> None:
    """The other side of the property: ids and keys that are fine are served."""
    for entity_id in draw(decent_text(), 8):
        vault = tc.client(Vault, entity_id, timeout=5.0)
        assert await vault.deposit(Deposit(key=entity_id, amount=2.0)) == 2.0
        assert await vault.deposit(Deposit(key=entity_id, amount=2.0)) == 2.0  # deduplicated
        assert await vault.total_of() == 2.0


async def test_empty_entity_id_and_primary_key_are_refused(tc: AnyCluster) -> None:
    """An empty id or key is almost always a missing value (a policy: see the report)."""
    ledger, stored, serving = probe(tc, tc.storage.backend)
    await ledger.refused("entity id ''", lambda: tc.client(Vault, "", timeout=1.5).deposit(good()),
                         reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    await ledger.refused("primary key ''",
                         lambda: tc.client(Vault, "v3", timeout=1.5).deposit(
                             Deposit(key="", amount=1.0)),
                         reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    ledger.check()


def _payloads(frame: int) -> list[tuple[str, object, Callable[[Reason], bool]]]:
    payload = PAYLOAD_MISTAKE.__contains__
    return [
        ("amount nan (dict)", {"key": "p1", "amount": math.nan}, payload),
        ("amount inf (dict)", {"key": "p2", "amount": math.inf}, payload),
        ("amount -1 (dict)", {"key": "p3", "amount": -1}, payload),
        ("count 0 (dict)", {"key": "p4", "amount": 1, "count": 0}, payload),
        ("amount nan (model_construct)",
         Deposit.model_construct(key="p5", amount=math.nan, count=1, note=None), payload),
        ("amount -1 (mutated after validation)", _mutated(), payload),
        ("amount str", {"key": "p6", "amount": "lots"}, payload),
        ("key int", {"key": 6, "amount": 1}, payload),
        ("payload int", 42, payload),
        ("payload str", "deposit please", payload),
        ("payload None", None, payload),
        ("missing field", {"amount": 1}, payload),
        ("note 10,000 levels deep", {"key": "p7", "amount": 1, "note": deep()}, payload),
        ("over the frame limit",
         {"key": "p8", "amount": 1, "note": "z" * (frame + 1024 * 1024)},
         lambda r: too_large(r) or r is Reason.INVALID_ARGUMENT),
    ]


def _mutated() -> Deposit:
    cmd = Deposit(key="p9", amount=1.0)
    cmd.amount = -1.0  # pydantic models are mutable; assignment is not validated
    return cmd


async def test_payloads_are_refused(tc: AnyCluster) -> None:
    ledger, stored, serving = probe(tc, tc.storage.backend)
    frame = tc.config.transport.max_frame_bytes
    ran = len(RAN)
    for label, payload, reasons in _payloads(frame):
        for rpc in ("deposit", "record", "peek"):
            await ledger.refused(
                f"{rpc}({label})",
                lambda rpc=rpc, payload=payload: getattr(
                    tc.client(Vault, "v4", timeout=1.5), rpc)(payload),
                reasons=reasons, stored=stored, serving=serving)
    await ledger.refused("deposit() without its argument",
                         lambda: tc.client(Vault, "v4", timeout=1.5).deposit(),
                         reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    await ledger.refused("total_of() given an argument",
                         lambda: tc.client(Vault, "v4", timeout=1.5).total_of(good()),
                         reasons=CALLER_MISTAKE, stored=stored, serving=serving)
    ran_keys = sorted(k for e, k in RAN[ran:] if e != "good-vault")
    if ran_keys:
        ledger.fail("handlers", f"ran for refused payloads {ran_keys}")
    ledger.check()


async def test_unknown_entity_types_and_rpcs(tc: AnyCluster) -> None:
    """Unknown names get a typed error; a persisted one never stays unprocessed
    (refused before storing, or completed with the error reply)."""
    ledger, _, serving = probe(tc, tc.storage.backend)
    member = tc.client_member
    cases = [
        ("unknown rpc", "BadInputVault", "no_such_rpc", Reason.UNKNOWN_RPC),
        ("unknown entity type", "NoSuchType", "deposit", Reason.UNKNOWN_ENTITY_TYPE),
    ]
    for label, entity_type, tag, reason in cases:
        for persisted in (False, True):
            await ledger.refused(
                f"{label} ({'persisted' if persisted else 'volatile'})",
                lambda t=entity_type, g=tag, p=persisted: member.send_raw(
                    t, "v5", g, b"\x80", persisted=p, timeout=3.0),
                reasons={reason}, stored=None, serving=serving)
            left = await unprocessed_messages(tc.storage)
            if left:
                ledger.fail(label, f"{left} message(s) left unprocessed (re-read forever)")
    with pytest.raises(AttributeError):  # a typed client has no such method
        _ = tc.client(Vault, "v5").no_such_rpc
    ledger.check()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("fresh_pg_database"))


@pytest.mark.postgres
async def test_calls_inside_the_application_transaction(pg_url: str) -> None:
    """On PostgreSQL, a refused call leaves the application's transaction usable
    (it never reached the database) and stores nothing when it commits."""
    async with open_cluster(pg_url, Vault) as tc:
        conn = await asyncpg.connect(pg_url)
        ledger, stored, _ = probe(tc, "postgres transaction")
        frame = tc.config.transport.max_frame_bytes
        try:
            cases: list[tuple[str, str, object]] = [
                *[(f"entity id {label}", bad, good()) for label, bad in HOSTILE_STRINGS],
                *[(f"primary key {label}", "t1",
                   Deposit.model_construct(key=bad, amount=1.0, count=1, note=None))
                  for label, bad in HOSTILE_STRINGS],
                ("amount nan", "t1", {"key": "t-nan", "amount": math.nan}),
                ("amount nan (model_construct)", "t1",
                 Deposit.model_construct(key="t-nan2", amount=math.nan, count=1, note=None)),
                ("note 10,000 levels deep", "t1", {"key": "t-deep", "amount": 1, "note": deep()}),
                ("over the frame limit", "t1",
                 {"key": "t-big", "amount": 1, "note": "z" * (frame + 1024 * 1024)}),
            ]
            for label, entity_id, payload in cases:
                async def call(entity_id: str = entity_id, payload: object = payload) -> None:
                    async with conn.transaction():
                        try:
                            await tc.client(Vault, entity_id, transaction=conn).deposit(payload)
                        finally:
                            # still usable: the refusal happened before the database
                            await conn.fetchval("SELECT 1")

                await ledger.refused(
                    label, call, stored=stored, serving=None,
                    reasons=lambda r: (r in CALLER_MISTAKE or r in PAYLOAD_MISTAKE
                                       or too_large(r)))

            async def serving() -> None:  # a good call in a committed transaction runs
                cmd = good(amount=5.0)
                async with conn.transaction():
                    await tc.client(Vault, "good-vault", transaction=conn).deposit(cmd)
                assert await tc.client(Vault, "good-vault", timeout=10.0).deposit(cmd) == 5.0

            await serving()
        finally:
            await conn.close()
        ledger.check()
