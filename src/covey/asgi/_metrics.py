"""The Prometheus endpoint: every metric of :mod:`covey.core.metrics`, plus process metrics.

A pure ASGI application (no framework needed), mounted at ``/metrics`` by
:func:`covey.asgi.install`, or by hand::

    app.mount("/metrics", covey.asgi.metrics_app)

It serves the default ``prometheus_client`` registry, which holds covey's
metrics, the ``process_*`` ones (CPU, memory, open files: Linux) and
``python_*`` (GC, version), and whatever the application registered there.
``GET`` and ``HEAD`` only; an ``Accept`` asking for OpenMetrics gets it; a
``name[]=`` query narrows the output to those metric names. Worker pods that
run no web application serve the same with ``covey run … --metrics-port``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

import covey.core.metrics  # noqa: F401  (registers covey's metrics)
from covey.core.runtime import answer_lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def render_metrics(registry: CollectorRegistry = REGISTRY, *, accept: str = "",
                   query: str = "") -> tuple[bytes, str]:
    """The exposition body and its content type (what the endpoint serves).

    Args:
        registry: the registry to expose (default: prometheus_client's, with covey's).
        accept: the request's ``Accept`` header (OpenMetrics when it asks for it).
        query: the request's query string (``name[]=covey_shards_owned&…`` narrows).
    """
    names = parse_qs(query).get("name[]")
    encoder, content_type = choose_encoder(accept)
    if names:
        return encoder(registry.restricted_registry(names)), content_type
    return encoder(registry), content_type


class MetricsApp:
    """An ASGI application serving a Prometheus registry (see the module docstring).

    Args:
        registry: the registry to expose (default: prometheus_client's, with covey's).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served as the application itself
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"the metrics endpoint serves HTTP, not {scope['type']!r}")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8",
                           extra=[(b"allow", b"GET, HEAD")])
            return
        accept = ""
        for key, value in scope.get("headers", []):
            if key.lower() == b"accept":
                accept = value.decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        body, content_type = render_metrics(self.registry, accept=accept, query=query)
        await _respond(send, 200, b"" if method == "HEAD" else body, content_type,
                       length=len(body))


async def _respond(send: Send, status: int, body: bytes, content_type: str, *,
                   length: int | None = None,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode("latin-1")),
               (b"content-length", str(len(body) if length is None else length).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})



metrics_app = MetricsApp()
"""The endpoint over the default registry: mount it at ``/metrics``."""
