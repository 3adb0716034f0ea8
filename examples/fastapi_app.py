"""covey in a FastAPI app: an account entity and a receipt job behind HTTP.

Every pod runs this same app with a runner embedded; point them at one
PostgreSQL database and they share the accounts and the jobs::

    export COVEY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    export COVEY_CLUSTER_SECRET=change-me
    uvicorn examples.fastapi_app:app --port 8000 --timeout-graceful-shutdown 30

    curl -X POST localhost:8000/accounts/a1/deposits -H 'content-type: application/json' \\
         -d '{"txn_id": "t1", "amount": 5}'
    curl localhost:8000/accounts/a1                       # {"account":"a1","balance":5}
    curl -X POST localhost:8000/accounts/a1/receipts      # {"job_id":"7212…"} (a string)
    curl localhost:8000/readyz                            # application/health+json

Errors come back as ``application/problem+json``: a deposit whose amount is not
a number is a 422 with ``"reason": "payload_invalid"``, the same ``txn_id``
with another amount a 409 ``idempotency_conflict``.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

import covey
import covey.asgi


class Deposit(BaseModel):
    txn_id: str
    amount: int


class Receipt(BaseModel):
    account: str


class Account(covey.Entity, type="Account"):
    """One live instance per account id, on whichever pod owns its shard."""

    balance: int = 0

    @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
    async def deposit(self, cmd: Deposit) -> int:
        """Durable and deduplicated: a retried txn_id gets the first reply."""
        self.balance += cmd.amount
        return self.balance

    @covey.rpc
    async def balance_of(self) -> int:
        """Volatile: answered from memory by the owning pod."""
        return self.balance


cluster = covey.Cluster.from_env()
cluster.register(Account)


@cluster.job("receipt.send")
async def send_receipt(job: covey.JobContext, receipt: Receipt) -> str:
    balance = await cluster.client(Account, receipt.account).balance_of()
    return f"receipt for {receipt.account}: balance {balance}"


app = FastAPI(lifespan=cluster.lifespan)
covey.asgi.install(app, cluster)


class Balance(BaseModel):
    account: str
    balance: int


class Submitted(BaseModel):
    job_id: covey.asgi.JsonId  # a string in JSON: JavaScript cannot hold 64-bit ids


class JobView(BaseModel):
    job_id: covey.asgi.JsonId
    state: str
    result: str | None = None


@app.post("/accounts/{account}/deposits")
async def deposit(account: str, cmd: Deposit) -> Balance:
    balance = await cluster.client(Account, account).deposit(cmd)
    return Balance(account=account, balance=balance)


@app.get("/accounts/{account}")
async def balance(account: str) -> Balance:
    return Balance(account=account, balance=await cluster.client(Account, account).balance_of())


@app.post("/accounts/{account}/receipts", status_code=202)
async def receipt(account: str) -> Submitted:
    handle = await send_receipt.submit(Receipt(account=account))
    return Submitted(job_id=handle.id)


@app.get("/jobs/{job_id}")
async def job(job_id: covey.asgi.JsonId) -> JobView:
    status = await cluster.jobs.status(job_id)
    return JobView(job_id=status.id, state=status.state, result=status.result)
