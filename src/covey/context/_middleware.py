"""ASGI middleware that fills the request context from each HTTP request.

Pure ASGI (works under Starlette, FastAPI, Quart, Django's ASGI handler…)::

    app = RequestContextMiddleware(app, cluster=cluster, require_tenant=True)

- tenant: ``tenant_resolver(scope)`` (default: the ``X-Tenant-ID`` header);
- request id: ``X-Request-ID`` if the client sent one, else a new snowflake
  (from the cluster when given, so it is unique cluster-wide); it is echoed in
  the response's ``X-Request-ID`` header;
- trace: the W3C ``traceparent`` header (a malformed one is ignored);
- a request that needs a tenant and has none gets ``400`` with a JSON error
  (``tenant_required``); probes and metrics scrapes (``exempt_paths``) never need
  one;
- a tenant or request id header that is not valid UTF-8, holds a control
  character, is longer than ``MAX_HEADER_BYTES`` or is sent twice with different
  values gets ``400`` (``invalid_header``): the application never sees it.

Inside the request, ``covey.current_context()`` returns it, and every entity call
carries it to whichever runner serves the entity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any, Protocol

from covey.context._headers import Scope, header, trace_parent
from covey.core import (
    REQUEST_HEADER,
    TENANT_HEADER,
    TRACEPARENT_HEADER,
    ClusterError,
    Reason,
    RequestContext,
    SnowflakeGenerator,
    use_context,
)
from covey.core.runtime import http_span, traced_context

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TenantResolver = Callable[[Scope], str | None]

DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset(
    {"/health", "/healthz", "/livez", "/readyz", "/metrics"})
"""Paths that never need a tenant: Kubernetes probes and Prometheus scrapes."""


class _HasSnowflake(Protocol):
    def snowflake(self) -> int: ...


def tenant_from_header(scope: Scope) -> str | None:
    """The default resolver: the ``X-Tenant-ID`` header (blank counts as none).

    Raises:
        ClusterError: ``invalid_argument`` for a malformed header (see :func:`header`).
    """
    value = header(scope, TENANT_HEADER)
    return value.strip() or None if value is not None else None


class RequestContextMiddleware:
    """Sets :class:`covey.RequestContext` for every HTTP and WebSocket request.

    Args:
        app: the ASGI application to wrap.
        cluster: gives cluster-wide unique request ids (any object with
            ``snowflake()``); without it ids come from a local generator.
        tenant_resolver: ``scope -> tenant id or None``. A resolver may call
            :func:`covey.context.header`; the ``ClusterError`` it raises for a
            malformed header becomes a ``400``.
        require_tenant: ``True`` for every request, or a predicate on the scope
            (e.g. ``lambda scope: scope["path"].startswith("/api/")``).
        user_resolver: ``scope -> user id or None`` (e.g. from your auth layer).
        exempt_paths: paths (exact ``scope["path"]``) that never need a tenant,
            whatever ``require_tenant`` says; default :data:`DEFAULT_EXEMPT_PATHS`.
            Pass ``()`` to exempt nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cluster: _HasSnowflake | None = None,
        tenant_resolver: TenantResolver = tenant_from_header,
        require_tenant: bool | Callable[[Scope], bool] = False,
        user_resolver: Callable[[Scope], str | None] | None = None,
        exempt_paths: Collection[str] = DEFAULT_EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self._cluster = cluster
        self._local_ids = SnowflakeGenerator(os.getpid() % 1024)
        self._tenant = tenant_resolver
        self._require = require_tenant
        self._user = user_resolver
        self._exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent_id = ""
        try:
            sent_id = header(scope, REQUEST_HEADER) or ""
            tenant = self._tenant(scope)
            user = self._user(scope) if self._user else None
        except ClusterError as exc:
            if exc.reason is not Reason.INVALID_ARGUMENT or "header" not in exc.details:
                raise
            # The client's request id if it was sound, so it can find this answer.
            await _refuse(scope, send, sent_id or str(self._new_id()), "invalid_header",
                          str(exc), header=exc.details["header"])
            return
        request_id = sent_id or str(self._new_id())
        if tenant is None and self._needs_tenant(scope):
            await _refuse(scope, send, request_id, "tenant_required",
                          "this request needs a tenant: send the X-Tenant-ID header")
            return
        parent = trace_parent(scope)
        carrier = {TRACEPARENT_HEADER: parent} if parent else {}
        context = RequestContext.from_headers(carrier).with_(
            tenant_id=tenant, request_id=request_id, user=user)
        echo = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message["headers"] = [*(message.get("headers") or []), echo]
                span.set_status_code(int(message.get("status", 200)))
            await send(message)

        # the request's span (OpenTelemetry, when configured): the context names it
        with http_span(scope, carrier, tenant=tenant, request_id=request_id) as span, \
                use_context(traced_context(context)):
            await self.app(scope, receive, send_with_id)

    def _needs_tenant(self, scope: Scope) -> bool:
        if scope.get("path") in self._exempt:
            return False
        return self._require(scope) if callable(self._require) else self._require

    def _new_id(self) -> int:
        if self._cluster is not None:
            try:
                return self._cluster.snowflake()
            except Exception:  # not started yet: fall back to a local generator
                pass
        return self._local_ids.next_id()


async def _refuse(scope: Scope, send: Send, request_id: str, error: str, message: str,
                  **extra: str) -> None:
    """Answer ``400`` with a JSON body whose ``error`` is a stable code."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4400})  # before accept: a 403 upgrade
        return
    body = json.dumps({"error": error, "message": message, **extra,
                       "request_id": request_id}).encode()
    await send({
        "type": "http.response.start", "status": 400,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode())],
    })
    await send({"type": "http.response.body", "body": body})
