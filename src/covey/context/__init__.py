"""Layer 4: the request context at the edge — who a request is for.

:class:`RequestContextMiddleware` fills :class:`covey.RequestContext` from each
HTTP request (tenant, request id, trace); covey carries it with every message.
Header values are read strictly (:func:`header`): a malformed tenant or request
id is answered ``400`` before the application sees it.
"""

from covey.context._headers import MAX_HEADER_BYTES, header, trace_parent
from covey.context._middleware import (
    DEFAULT_EXEMPT_PATHS,
    RequestContextMiddleware,
    tenant_from_header,
)

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "MAX_HEADER_BYTES",
    "RequestContextMiddleware",
    "header",
    "tenant_from_header",
    "trace_parent",
]
