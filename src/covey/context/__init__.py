"""Layer 4: the request context at the edge — who a request is for.

:class:`RequestContextMiddleware` fills :class:`covey.RequestContext` from each
HTTP request (tenant, request id, trace); covey carries it with every message.
"""

from covey.context._middleware import (
    RequestContextMiddleware,
    header,
    tenant_from_header,
)

__all__ = ["RequestContextMiddleware", "header", "tenant_from_header"]
