"""covey in an ASGI application (Starlette, FastAPI): lifespan, errors as HTTP, probes.

The one call::

    cluster = covey.Cluster.from_env()
    app = FastAPI(lifespan=cluster.lifespan)   # starts the cluster, leaves it on shutdown
    covey.asgi.install(app, cluster)           # errors, request context, probes, metrics,
                                               # the SIGTERM drain sequence

The parts are public too, for other frameworks and for apps that assemble
their own: :func:`problem_for` (a :class:`~covey.ClusterError` as RFC 9457
problem+json), :class:`ProbeEndpoint` (pure ASGI probe), :data:`metrics_app`
(Prometheus), :func:`drain_on_sigterm`, and the JSON id helpers :data:`JsonId`
and :func:`json_safe` (ids are strings in JSON). Starlette is imported only by
:func:`install`.
"""

from covey.asgi._draining import drain_on_sigterm
from covey.asgi._install import install
from covey.asgi._json import MAX_SAFE_INTEGER, JsonId, json_safe
from covey.asgi._metrics import MetricsApp, metrics_app
from covey.asgi._probes import HEALTH_CONTENT_TYPE, ProbeEndpoint
from covey.asgi._problems import (
    PROBLEM_CONTENT_TYPE,
    STATUS,
    HttpStatus,
    Problem,
    problem_for,
    status_of,
)

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "HttpStatus",
    "JsonId",
    "MAX_SAFE_INTEGER",
    "MetricsApp",
    "PROBLEM_CONTENT_TYPE",
    "ProbeEndpoint",
    "Problem",
    "STATUS",
    "drain_on_sigterm",
    "install",
    "json_safe",
    "metrics_app",
    "problem_for",
    "status_of",
]
