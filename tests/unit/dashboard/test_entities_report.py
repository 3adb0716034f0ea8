"""Each runner reports its active entities by type; the entities view sums them."""

from __future__ import annotations

import httpx

from covey.health.runtime import ENTITIES_KEY, EntityReport, read_entity_counts

from .conftest import Cart, Shop, build, until


async def test_a_runner_reports_its_active_entities_while_it_runs_and_forgets_them_on_leave(
) -> None:
    shop = build()
    cluster = shop.cluster
    async with cluster:
        runner = str(cluster.address)

        async def reported() -> bool:
            return bool(await read_entity_counts(cluster.storage.state, [runner]))

        await until(reported)  # the loop's first report is at once
        await cluster.client(Cart, "c-1").ping()
        await EntityReport(cluster.storage.state, cluster._clock, runner).report()
        (counts,) = await read_entity_counts(cluster.storage.state, [runner])
        assert counts.runner == runner and counts.entities.get("Cart", 0) >= 1
        assert counts.started <= counts.at
    assert await cluster.storage.state.get(ENTITIES_KEY + runner) is None


async def test_the_entities_view_shows_each_type_with_its_runners(
        shop: Shop, dash: httpx.AsyncClient) -> None:
    await shop.cluster.client(Cart, "c-9").ping()
    runner = str(shop.cluster.address)
    await EntityReport(shop.cluster.storage.state, shop.cluster._clock, runner).report()
    page = (await dash.get("/entities")).text
    row = page.split('data-testid="entity-row-Cart"')[1].split("</tr>")[0]
    assert runner in row
