"""The event groups and webhooks views: lag, dead-letters, endpoints, attempts."""

from __future__ import annotations

from typing import Any

from covey.dashboard._render import PAGE
from covey.dashboard._source import DashboardSource
from covey.dashboard._views import Params, View


async def events(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Every subscriber group: topics, lag (events and seconds), dead letters."""
    lags = await source.events.lag()
    groups = [lags[name] for name in sorted(lags)]
    topics = await source.events.topics()
    return {"title": "Events", "groups": groups, "topics": topics}


async def group(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """One group: its topics and cursors, its lag, a page of its dead letters."""
    name = params.get("id", "")
    rows = await source.events.groups(name)  # unknown: invalid_argument, not_found
    lag = (await source.events.lag(name)).get(name)
    dead = await source.events.dead_letters(name, limit=PAGE)
    return {"title": f"Event group {name}", "group": name, "topics": rows, "lag": lag,
            "dead": dead}


async def webhooks(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Every endpoint: URL, types, tenant, enabled, failing since."""
    endpoints = await source.webhooks.endpoints()
    return {"title": "Webhooks", "endpoints": endpoints}


async def endpoint(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """One endpoint: its recent deliveries with their attempts, its dead letters."""
    endpoint_id = params.get("id", "")
    found = await source.webhooks.endpoint(endpoint_id)
    deliveries = await source.webhooks.deliveries(endpoint=found.id, limit=PAGE)
    dead = await source.webhooks.dead_letters(endpoint=found.id, limit=PAGE)
    return {"title": f"Webhook endpoint {found.id}", "endpoint": found,
            "deliveries": deliveries, "dead": dead}


VIEWS = [View("events", "events", events), View("group", "events", group, forms="forms/group.html"),
         View("webhooks", "webhooks", webhooks), View("endpoint", "webhooks", endpoint)]
