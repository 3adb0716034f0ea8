"""The covey dashboard mounted in a FastAPI app, behind the app's own authentication.

Operators send ``Authorization: Bearer <token>``; the token names the operator
(here a fixed table, in a real app your session or SSO). Everyone else gets a
403 page from the dashboard::

    export COVEY_DATABASE_URL=sqlite:///shop.db
    export OPS_TOKENS=alice:change-me
    uvicorn examples.dashboard_app:app --port 8000

    curl -H 'authorization: Bearer change-me' localhost:8000/ops/jobs

In a browser put the dashboard behind the login your app already has (a session
cookie read in ``authorize``); ``covey dashboard --token ...`` serves it on its
own with HTTP Basic auth instead.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel

import covey
from covey.dashboard import DashboardRequest

cluster = covey.Cluster.from_env()


class Receipt(BaseModel):
    account: str


@cluster.job("receipts.send", retry=covey.Retry(max_attempts=1))
async def send_receipt(job: covey.JobContext, receipt: Receipt) -> str:
    if receipt.account.startswith("bad"):
        raise ConnectionError(f"no mail server for {receipt.account}")
    return f"receipt sent to {receipt.account}"


#: bearer token -> operator name, from OPS_TOKENS="alice:token1,bob:token2"
TOKENS = {token: name for name, _, token in (
    pair.partition(":") for pair in os.environ.get("OPS_TOKENS", "").split(",") if pair)}


def authorize(request: DashboardRequest) -> str | None:
    """The operator a request's bearer token names, or None (403)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return TOKENS.get(token) if scheme.lower() == "bearer" and token else None


app = FastAPI(lifespan=cluster.lifespan)
app.mount("/ops", cluster.dashboard(authorize=authorize))


@app.post("/receipts/{account}")
async def submit(account: str) -> dict[str, str]:
    handle = await send_receipt.submit(Receipt(account=account))
    return {"job_id": str(handle.id)}
