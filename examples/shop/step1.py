"""The shop, step 1: a cart entity behind a FastAPI app, one process, SQLite.

The tutorial that builds it: ``docs/tutorial/1-one-process.md``. Serve it from
the repository root (covey creates ``covey.db`` in the current directory)::

    uvicorn step1:app --app-dir examples/shop --port 8000

    curl -X POST localhost:8000/carts/c1/items -H 'content-type: application/json' \\
         -d '{"line_id": "l1", "sku": "book"}'
    curl localhost:8000/carts/c1
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

import covey
import covey.asgi

# --8<-- [start:models]
Sku = Literal["book", "pen", "mug"]  # what the shop sells


class AddItem(BaseModel):
    """``POST /carts/{cart_id}/items``: put ``qty`` of ``sku`` in the cart."""

    line_id: str = Field(min_length=1, max_length=64)  # the client's id for this line
    sku: Sku
    qty: int = Field(default=1, ge=1, le=99)


class CartView(BaseModel):
    """What the API answers about a cart."""

    cart_id: str
    items: dict[str, int]
# --8<-- [end:models]


# --8<-- [start:cart]
class Cart(covey.Entity, type="Cart"):
    """One live cart per cart id, on whichever runner owns its shard."""

    items: dict[str, int] = {}  # in memory only: step 2 makes it durable

    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.line_id)
    async def add(self, cmd: AddItem) -> CartView:
        """Stored before it runs; a retried ``line_id`` gets the first reply."""
        self.items[cmd.sku] = self.items.get(cmd.sku, 0) + cmd.qty
        return self._view()

    @covey.rpc
    async def view(self) -> CartView:
        """Volatile: answered from the instance's memory, nothing stored."""
        return self._view()

    def _view(self) -> CartView:
        return CartView(cart_id=self.ctx.entity_id, items=dict(self.items))
# --8<-- [end:cart]


# --8<-- [start:app]
cluster = covey.Cluster.from_env()  # COVEY_DATABASE_URL; default sqlite:///covey.db
cluster.register(Cart)

app = FastAPI(lifespan=cluster.lifespan)  # the cluster starts and stops with the app
covey.asgi.install(app, cluster)  # problem+json errors, /livez /readyz /metrics, SIGTERM


@app.post("/carts/{cart_id}/items")
async def add_item(cart_id: str, cmd: AddItem) -> CartView:
    return await cluster.client(Cart, cart_id).add(cmd)


@app.get("/carts/{cart_id}")
async def view_cart(cart_id: str) -> CartView:
    return await cluster.client(Cart, cart_id).view()
# --8<-- [end:app]
