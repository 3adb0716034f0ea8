"""The application of the events acceptance test (``test_events.py``).

``covey run tests.acceptance.events_app:cluster`` with ``COVEY_DATABASE_URL``
pointing at the test database, whose tables the test creates first (``SCHEMA``).

``OrderPlaced`` events (topic ``accept.orders``, partition key ``key``) go to two
groups, ``billing`` and ``email``. Each handler inserts one row into its group's
effects table through ``ctx.transaction`` (so the row commits with the delivery,
once). The effects tables have no unique constraint, so an event handled twice
shows as two rows; their ``id`` (a sequence, taken at insert) orders the rows of
one key in the order the handler ran them. Every run is also counted in
``event_runs`` on a connection of its own, outside covey's transaction.
"""

from __future__ import annotations

import covey

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE orders (key text NOT NULL, seq int NOT NULL);
CREATE TABLE billing_effects (id bigserial, event_id bigint NOT NULL, key text NOT NULL,
                              seq int NOT NULL, runner text NOT NULL);
CREATE TABLE email_effects (id bigserial, event_id bigint NOT NULL, key text NOT NULL,
                            seq int NOT NULL, runner text NOT NULL);
CREATE TABLE event_runs (grp text NOT NULL, event_id bigint NOT NULL);
"""

runs_pool = AppPool(max_size=2)  # autocommit: outside covey's transaction


class OrderPlaced(covey.Event, topic="accept.orders", key="key"):
    key: str
    seq: int


async def _effect(table: str, event: OrderPlaced, ctx: covey.EventContext) -> None:
    await (await runs_pool()).execute(
        "INSERT INTO event_runs (grp, event_id) VALUES ($1, $2)", ctx.group, ctx.event_id)
    tx = await ctx.transaction()  # staged: runs in covey's commit transaction
    await tx.execute(
        f"INSERT INTO {table} (event_id, key, seq, runner) VALUES ($1, $2, $3, $4)",
        ctx.event_id, event.key, event.seq, ctx.context.cluster.runner_id or "?")


def cluster() -> covey.Cluster:
    app = covey.Cluster.from_env()

    @app.subscribe(OrderPlaced, group="billing", start="earliest")
    async def bill(event: OrderPlaced, ctx: covey.EventContext) -> None:
        await _effect("billing_effects", event, ctx)

    @app.subscribe(OrderPlaced, group="email", start="earliest")
    async def email(event: OrderPlaced, ctx: covey.EventContext) -> None:
        await _effect("email_effects", event, ctx)

    return app
