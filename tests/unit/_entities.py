"""Entities shared by the entity tests."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import covey


class Deposit(BaseModel):
    txn_id: str
    amount: int


APPLIED: list[tuple[str, str]] = []  # (entity id, txn id) per handler run


class Account(covey.Entity, type="Account"):
    balance: int = 0
    history: list[str] = []  # mutable default: must not be shared between instances

    @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
    async def deposit(self, cmd: Deposit) -> int:
        APPLIED.append((self.ctx.entity_id, cmd.txn_id))
        self.balance += cmd.amount
        self.history.append(cmd.txn_id)
        return self.balance

    @covey.rpc
    async def balance_of(self) -> int:
        return self.balance

    @covey.rpc
    async def add_volatile(self, amount: int) -> int:
        self.balance += amount
        return self.balance

    @covey.rpc
    async def fail(self, text: str) -> None:
        raise ValueError(text)

    @covey.rpc
    async def where(self) -> dict[str, str]:
        ctx = covey.current_context()
        return {"runner": str(self.ctx.runner), "shard": self.ctx.shard,
                "entity": self.ctx.entity_id, "placed": str(ctx.cluster.entity),
                "tenant": str(ctx.tenant_id)}


class Slow(covey.Entity, type="Slow", concurrency=1, mailbox_capacity=2):
    running: int = 0
    peak: int = 0

    @covey.rpc
    async def work(self, seconds: float) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return self.peak


class Parallel(covey.Entity, type="Parallel", concurrency=4):
    running: int = 0
    peak: int = 0

    @covey.rpc
    async def work(self, seconds: float) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.peak


class Ephemeral(covey.Entity, type="Ephemeral", max_idle=0.2):
    starts: int = 0

    async def on_start(self) -> None:
        STARTS.append(self.ctx.entity_id)

    @covey.rpc
    async def ping(self) -> int:
        return len(STARTS)


STARTS: list[str] = []
