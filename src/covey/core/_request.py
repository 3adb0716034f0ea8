"""The request context: who a piece of work is for, and where it runs.

A :class:`RequestContext` lives in a context variable. The ASGI middleware
(``covey.context``) fills it from the HTTP request; every entity call made while
it is set carries it in the message headers, and the runner that handles the
message sets it again around the handler — so a handler, singleton or cron run
started by a request sees the same tenant and request id on whichever pod it
runs, without anyone passing it by hand.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

TENANT_HEADER = "x-tenant-id"
REQUEST_HEADER = "x-request-id"
USER_HEADER = "x-user"
TRACEPARENT_HEADER = "traceparent"


@dataclass(frozen=True)
class ClusterPlacement:
    """Where the current work runs (filled in by covey, not by the application).

    Attributes:
        runner_id: the runner's address (``host:port``), or ``None`` outside a runner.
        shard_id: the shard (``group:n``) of the entity or singleton being served.
        entity: the entity address (``type/id``) being served, if any.
        is_leader: ``True`` inside a singleton (this runner is its only host).
    """

    runner_id: str | None = None
    shard_id: str | None = None
    entity: str | None = None
    is_leader: bool = False


@dataclass(frozen=True)
class RequestContext:
    """Who the current work is for. Immutable; derive with :meth:`with_`.

    Attributes:
        tenant_id: the tenant, from ``X-Tenant-ID`` or a custom resolver.
        request_id: from ``X-Request-ID`` or a new snowflake.
        user: an opaque user identifier the application chooses to propagate.
        trace_id: W3C trace id (32 hex), from ``traceparent`` when present.
        span_id: W3C parent span id (16 hex).
        cluster: where it runs (see :class:`ClusterPlacement`).
    """

    tenant_id: str | None = None
    request_id: str | None = None
    user: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    cluster: ClusterPlacement = field(default_factory=ClusterPlacement)

    def with_(self, **changes: object) -> RequestContext:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_headers(self) -> dict[str, str]:
        """The headers that carry this context in a message (placement excluded)."""
        headers: dict[str, str] = {}
        if self.tenant_id is not None:
            headers[TENANT_HEADER] = self.tenant_id
        if self.request_id is not None:
            headers[REQUEST_HEADER] = self.request_id
        if self.user is not None:
            headers[USER_HEADER] = self.user
        if self.trace_id and self.span_id:
            headers[TRACEPARENT_HEADER] = f"00-{self.trace_id}-{self.span_id}-01"
        return headers

    @classmethod
    def from_headers(
        cls, headers: Mapping[str, str], cluster: ClusterPlacement | None = None
    ) -> RequestContext:
        """Rebuild a context from message headers (unknown headers are ignored)."""
        trace_id = span_id = None
        parent = headers.get(TRACEPARENT_HEADER)
        if parent:
            parts = parent.split("-")
            if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                trace_id, span_id = parts[1], parts[2]
        return cls(
            tenant_id=headers.get(TENANT_HEADER),
            request_id=headers.get(REQUEST_HEADER),
            user=headers.get(USER_HEADER),
            trace_id=trace_id,
            span_id=span_id,
            cluster=cluster or ClusterPlacement(),
        )


_EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "covey_request_context", default=_EMPTY
)


def current_context() -> RequestContext:
    """The context of the work running now (an empty one outside any request)."""
    return _current.get()


@contextlib.contextmanager
def use_context(context: RequestContext) -> Iterator[RequestContext]:
    """Make ``context`` current inside the ``with`` block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
