"""The request context: ASGI middleware, propagation through entity calls."""

from __future__ import annotations

import json
from typing import Any

import covey
from covey.context import RequestContextMiddleware
from covey.testing import TestCluster


class Probe(covey.Entity, type="Probe"):
    @covey.rpc
    async def seen(self) -> dict[str, str | None]:
        ctx = covey.current_context()
        return {"tenant": ctx.tenant_id, "request": ctx.request_id, "user": ctx.user,
                "trace": ctx.trace_id, "runner": ctx.cluster.runner_id,
                "entity": ctx.cluster.entity}


async def call(app: Any, headers: dict[str, str], path: str = "/") -> tuple[int, dict[str, str],
                                                                             Any]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "GET", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out_headers, json.loads(body) if body else None


def json_app(handler: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        payload = json.dumps(await handler()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    return app


async def test_tenant_and_request_id_reach_an_entity_on_another_runner() -> None:
    async with TestCluster(Probe, runners=3) as tc:
        client = tc.client_member

        async def handler() -> Any:
            return await tc.client(Probe, "p1").seen()

        app = RequestContextMiddleware(json_app(handler), cluster=client)
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        status, headers, seen = await call(
            app, {"X-Tenant-ID": "acme", "X-Request-ID": "req-42", "traceparent": trace})
        assert status == 200 and headers["x-request-id"] == "req-42"
        assert seen["tenant"] == "acme" and seen["request"] == "req-42"
        assert seen["trace"] == "0af7651916cd43dd8448eb211c80319c"
        assert seen["entity"] == "Probe/p1"
        assert seen["runner"] != str(client.address)  # handled on a runner, not the caller
        # no request id sent: one is made (a snowflake) and echoed
        status, headers, seen = await call(app, {"X-Tenant-ID": "acme"})
        assert status == 200 and seen["request"] == headers["x-request-id"]
        assert int(headers["x-request-id"]) > 0


async def test_a_request_that_needs_a_tenant_gets_400_json() -> None:
    async def handler() -> Any:
        raise AssertionError("must not run")

    app = RequestContextMiddleware(json_app(handler),
                                   require_tenant=lambda s: s["path"].startswith("/api"))
    status, headers, body = await call(app, {}, path="/api/orders")
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"] == "tenant_required" and body["request_id"] == headers["x-request-id"]
    status, _, body = await call(app, {"X-Tenant-ID": "  "}, path="/api/x")
    assert status == 400  # blank is no tenant

    async def ok() -> Any:
        return covey.current_context().tenant_id

    status, _, body = await call(RequestContextMiddleware(json_app(ok), require_tenant=True),
                                 {"X-Tenant-ID": "t9"})
    assert status == 200 and body == "t9"


async def test_custom_resolvers() -> None:
    async def handler() -> Any:
        ctx = covey.current_context()
        return [ctx.tenant_id, ctx.user]

    app = RequestContextMiddleware(
        json_app(handler),
        tenant_resolver=lambda scope: scope["path"].split("/")[1] or None,
        user_resolver=lambda scope: "u-1",
    )
    assert (await call(app, {}, path="/globex/items"))[2] == ["globex", "u-1"]


async def test_context_outside_requests_is_empty_and_restored() -> None:
    assert covey.current_context().tenant_id is None
    with covey.use_context(covey.RequestContext(tenant_id="x")):
        assert covey.current_context().tenant_id == "x"
    assert covey.current_context().tenant_id is None
