"""The request context: ASGI middleware, propagation through entity calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import covey
from covey.context import MAX_HEADER_BYTES, RequestContextMiddleware, header
from covey.core import ClusterError, Reason
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


# --- bad input at the edge (issue 8): typed 400s, never a 500, the next request served ---

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def call_raw(app: Any, headers: list[tuple[bytes, bytes]], path: str = "/api/x",
                   ) -> tuple[int, dict[str, bytes], Any]:
    """One HTTP request with raw header bytes, exactly as an ASGI server passes them."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body) if body else None


def context_app() -> tuple[Any, list[covey.RequestContext]]:
    """An app that answers with the context it saw (and records that it ran)."""
    seen: list[covey.RequestContext] = []

    async def handler() -> Any:
        ctx = covey.current_context()
        seen.append(ctx)
        return {"tenant": ctx.tenant_id, "request": ctx.request_id, "trace": ctx.trace_id}

    return json_app(handler), seen


async def test_header_values_are_decoded_as_utf8() -> None:
    app, _ = context_app()
    status, headers, body = await call_raw(RequestContextMiddleware(app), [
        (b"x-tenant-id", "café".encode()), (b"x-request-id", "req-日本".encode())])
    assert status == 200
    assert body["tenant"] == "café" and body["request"] == "req-日本"
    assert headers[b"x-request-id"] == "req-日本".encode()  # echoed as sent


HOSTILE = [
    pytest.param(b"x-tenant-id", b"acme\x00evil", id="tenant-nul"),
    pytest.param(b"x-tenant-id", b"\xff\xfe\xfa", id="tenant-not-utf8"),
    pytest.param(b"x-tenant-id", b"caf\xe9", id="tenant-latin1"),
    pytest.param(b"x-tenant-id", b"a\r\nx-admin: 1", id="tenant-crlf"),
    pytest.param(b"x-tenant-id", b"t" * 1_000_000, id="tenant-1mb"),
    pytest.param(b"x-request-id", b"r\x00", id="request-nul"),
    pytest.param(b"x-request-id", b"\xc3\x28", id="request-not-utf8"),
    pytest.param(b"x-request-id", b"r" * 1_000_000, id="request-1mb"),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE)
async def test_a_hostile_header_gets_400_json_and_the_next_request_is_served(
    name: bytes, value: bytes
) -> None:
    app, seen = context_app()
    mw = RequestContextMiddleware(app, require_tenant=False)
    status, headers, body = await call_raw(mw, [(name, value)])
    assert status == 400 and headers[b"content-type"] == b"application/json"
    assert body["error"] == "invalid_header" and body["header"] == name.decode()
    assert body["request_id"] == headers[b"x-request-id"].decode()  # a fresh, clean id
    assert int(body["request_id"]) > 0
    assert seen == []  # the application never ran
    status, _, body = await call_raw(mw, [(b"x-tenant-id", b"acme")])
    assert status == 200 and body["tenant"] == "acme"


def test_header_refuses_bad_values_with_a_typed_error() -> None:
    scope = {"headers": [(b"x-tenant-id", b"\xff")]}
    with pytest.raises(ClusterError) as caught:
        header(scope, "X-Tenant-ID")
    assert caught.value.reason is Reason.INVALID_ARGUMENT and not caught.value.retryable
    assert caught.value.details["header"] == "x-tenant-id"
    long = {"headers": [(b"x-tenant-id", b"t" * (MAX_HEADER_BYTES + 1))]}
    with pytest.raises(ClusterError):
        header(long, "x-tenant-id")
    fits = {"headers": [(b"x-tenant-id", b"t" * MAX_HEADER_BYTES)]}
    assert header(fits, "x-tenant-id") == "t" * MAX_HEADER_BYTES


async def test_repeated_headers_must_agree() -> None:
    app, seen = context_app()
    mw = RequestContextMiddleware(app)
    status, _, body = await call_raw(mw, [(b"x-tenant-id", b"acme"), (b"X-Tenant-ID", b"acme")])
    assert status == 200 and body["tenant"] == "acme"  # a proxy repeating it is harmless
    status, _, body = await call_raw(mw, [(b"x-tenant-id", b"acme"), (b"x-tenant-id", b"evil")])
    assert status == 400 and body["error"] == "invalid_header"
    status, _, body = await call_raw(mw, [(b"x-request-id", b"a"), (b"x-request-id", b"b")])
    assert status == 400 and body["header"] == "x-request-id"
    assert len(seen) == 1
    # a sound request id is kept in the refusal of a bad tenant, for the client's logs
    status, headers, body = await call_raw(mw, [(b"x-request-id", b"rq-7"),
                                                (b"x-tenant-id", b"\x00")])
    assert status == 400 and body["request_id"] == "rq-7" and headers[b"x-request-id"] == b"rq-7"


async def test_an_empty_tenant_is_no_tenant() -> None:
    app, _ = context_app()
    status, _, body = await call_raw(RequestContextMiddleware(app), [(b"x-tenant-id", b"")])
    assert status == 200 and body["tenant"] is None
    status, _, body = await call_raw(RequestContextMiddleware(app, require_tenant=True),
                                     [(b"x-tenant-id", b" \t ")])
    assert status == 400 and body["error"] == "tenant_required"


@pytest.mark.parametrize("value", [
    b"garbage",
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",          # no flags
    b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",       # upper case
    b"00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",       # not hex
    b"00-00000000000000000000000000000000-b7ad6b7169203331-01",       # zero trace id
    b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",       # zero parent id
    b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",       # forbidden version
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",     # v00 has no more
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x00",
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\xff-01",
    TRACE.encode() * 20_000,
])
async def test_a_malformed_traceparent_is_ignored(value: bytes) -> None:
    app, _ = context_app()
    status, _, body = await call_raw(RequestContextMiddleware(app),
                                     [(b"x-tenant-id", b"acme"), (b"traceparent", value)])
    assert status == 200 and body["tenant"] == "acme"
    assert body["trace"] is None  # a new trace starts here, per W3C


async def test_a_valid_traceparent_is_kept_and_a_future_version_is_read() -> None:
    app, _ = context_app()
    mw = RequestContextMiddleware(app)
    _, _, body = await call_raw(mw, [(b"traceparent", TRACE.encode())])
    assert body["trace"] == "0af7651916cd43dd8448eb211c80319c"
    future = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next"
    _, _, body = await call_raw(mw, [(b"traceparent", future)])
    assert body["trace"] == "0af7651916cd43dd8448eb211c80319c"
    _, _, body = await call_raw(mw, [(b"traceparent", TRACE.encode()),
                                     (b"traceparent", TRACE.replace("0af7", "1af7").encode())])
    assert body["trace"] is None  # two different parents: neither is trusted


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/metrics"])
async def test_probes_and_scrapes_need_no_tenant(path: str) -> None:
    app, _ = context_app()
    status, _, _ = await call_raw(RequestContextMiddleware(app, require_tenant=True), [], path)
    assert status == 200
    status, _, _ = await call_raw(RequestContextMiddleware(app, require_tenant=True), [], "/api")
    assert status == 400


async def test_the_exempt_paths_are_configurable() -> None:
    app, _ = context_app()
    mw = RequestContextMiddleware(app, require_tenant=True, exempt_paths={"/ping"})
    assert (await call_raw(mw, [], "/ping"))[0] == 200
    assert (await call_raw(mw, [], "/healthz"))[0] == 400
    predicate = RequestContextMiddleware(app, require_tenant=lambda s: True)
    assert (await call_raw(predicate, [], "/metrics"))[0] == 200  # exempt first
    assert (await call_raw(predicate, [], "/orders"))[0] == 400


async def test_a_websocket_with_a_hostile_header_is_closed_before_accept() -> None:
    app, seen = context_app()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"x-tenant-id", b"\x00")]}
    await RequestContextMiddleware(app)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 4400}] and seen == []


async def test_hostile_headers_through_httpx_never_give_a_500() -> None:
    app, _ = context_app()
    transport = httpx.ASGITransport(app=RequestContextMiddleware(app, require_tenant=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://covey") as http:
        bad = await http.get("/api", headers={"X-Tenant-ID": b"\xff\xfe"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_header"
        ok = await http.get("/api", headers={"X-Tenant-ID": "café".encode()})
        assert ok.status_code == 200 and ok.json()["tenant"] == "café"
        probe = await http.get("/healthz")
        assert probe.status_code == 200


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([b"x-tenant-id", b"x-request-id", b"traceparent"]),
       values=st.lists(st.binary(max_size=600), min_size=1, max_size=3))
def test_any_header_bytes_give_200_or_a_typed_400(name: bytes, values: list[bytes]) -> None:
    app, seen = context_app()
    mw = RequestContextMiddleware(app)
    status, _, body = asyncio.run(call_raw(mw, [(name, v) for v in values]))
    assert status in (200, 400)
    if status == 400:
        assert body["error"] == "invalid_header" and body["header"] == name.decode()
        assert seen == []
    elif name == b"x-tenant-id":
        assert body["tenant"] == (values[0].decode().strip() or None)
    status, _, _ = asyncio.run(call_raw(mw, [(b"x-tenant-id", b"next")]))
    assert status == 200
