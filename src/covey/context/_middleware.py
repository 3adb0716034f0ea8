"""ASGI middleware that fills the request context from each HTTP request.

Pure ASGI (works under Starlette, FastAPI, Quart, Django's ASGI handler…)::

    app = RequestContextMiddleware(app, cluster=cluster, require_tenant=True)

- tenant: ``tenant_resolver(scope)`` (default: the ``X-Tenant-ID`` header);
- request id: ``X-Request-ID`` if the client sent one, else a new snowflake
  (from the cluster when given, so it is unique cluster-wide); it is echoed in
  the response's ``X-Request-ID`` header;
- trace: the W3C ``traceparent`` header;
- a request that needs a tenant and has none gets ``400`` with a JSON error.

Inside the request, ``covey.current_context()`` returns it, and every entity call
carries it to whichever runner serves the entity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from covey.core import (
    REQUEST_HEADER,
    TENANT_HEADER,
    TRACEPARENT_HEADER,
    RequestContext,
    SnowflakeGenerator,
    use_context,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TenantResolver = Callable[[Scope], str | None]


class _HasSnowflake(Protocol):
    def snowflake(self) -> int: ...


def header(scope: Scope, name: str) -> str | None:
    """The first value of request header ``name`` (case-insensitive), decoded."""
    wanted = name.lower().encode()
    for key, value in scope.get("headers") or ():
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def tenant_from_header(scope: Scope) -> str | None:
    """The default resolver: the ``X-Tenant-ID`` header (blank counts as none)."""
    value = header(scope, TENANT_HEADER)
    return value.strip() or None if value is not None else None


class RequestContextMiddleware:
    """Sets :class:`covey.RequestContext` for every HTTP and WebSocket request.

    Args:
        app: the ASGI application to wrap.
        cluster: gives cluster-wide unique request ids (any object with
            ``snowflake()``); without it ids come from a local generator.
        tenant_resolver: ``scope -> tenant id or None``.
        require_tenant: ``True`` for every request, or a predicate on the scope
            (e.g. ``lambda scope: scope["path"].startswith("/api/")``).
        user_resolver: ``scope -> user id or None`` (e.g. from your auth layer).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cluster: _HasSnowflake | None = None,
        tenant_resolver: TenantResolver = tenant_from_header,
        require_tenant: bool | Callable[[Scope], bool] = False,
        user_resolver: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self._cluster = cluster
        self._local_ids = SnowflakeGenerator(os.getpid() % 1024)
        self._tenant = tenant_resolver
        self._require = require_tenant
        self._user = user_resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        tenant = self._tenant(scope)
        required = self._require(scope) if callable(self._require) else self._require
        request_id = header(scope, REQUEST_HEADER) or str(self._new_id())
        if required and tenant is None:
            await _reject(scope, send, request_id)
            return
        context = RequestContext.from_headers(
            {TRACEPARENT_HEADER: header(scope, TRACEPARENT_HEADER) or ""}
        ).with_(tenant_id=tenant, request_id=request_id,
                user=self._user(scope) if self._user else None)

        async def send_with_id(message: Message) -> None:
            if message.get("type") == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        with use_context(context):
            await self.app(scope, receive, send_with_id)

    def _new_id(self) -> int:
        if self._cluster is not None:
            try:
                return self._cluster.snowflake()
            except Exception:  # not started yet: fall back to a local generator
                pass
        return self._local_ids.next_id()


async def _reject(scope: Scope, send: Send, request_id: str) -> None:
    body = json.dumps({
        "error": "tenant_required",
        "message": "this request needs a tenant: send the X-Tenant-ID header",
        "request_id": request_id,
    }).encode()
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4400})
        return
    await send({
        "type": "http.response.start", "status": 400,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode("latin-1"))],
    })
    await send({"type": "http.response.body", "body": body})
