"""``covey.asgi.install(app, cluster)``: everything a Starlette/FastAPI app needs.

Starlette is imported when :func:`install` runs, never when covey is imported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from covey.asgi._draining import drain_on_sigterm
from covey.asgi._metrics import metrics_app
from covey.asgi._probes import ProbeEndpoint
from covey.asgi._problems import log_problem, problem_for
from covey.cluster import Cluster
from covey.context import DEFAULT_EXEMPT_PATHS, RequestContextMiddleware, tenant_from_header
from covey.core import ClusterError, Reason

log = logging.getLogger("covey.asgi")

Scope = Any  # an ASGI scope (a mutable mapping)


def install(
    app: Any,
    cluster: Cluster,
    *,
    drain_delay: float | None = None,
    require_tenant: bool | Callable[[Scope], bool] = False,
    tenant_resolver: Callable[[Scope], str | None] = tenant_from_header,
    user_resolver: Callable[[Scope], str | None] | None = None,
    exempt_paths: Collection[str] = DEFAULT_EXEMPT_PATHS,
    metrics: bool = True,
    expose_internal: bool = False,
) -> None:
    """Add covey to a Starlette or FastAPI app (before it starts).

    Adds, in one call:

    - an exception handler answering every :class:`~covey.ClusterError` with
      ``application/problem+json`` and the status documented for its reason;
    - :class:`~covey.context.RequestContextMiddleware` (tenant, request id,
      trace; probe and metrics paths never need a tenant);
    - ``GET /livez``, ``/readyz`` and ``/health`` (``cluster.health``, cached,
      ``application/health+json``) and ``GET /metrics`` (Prometheus);
    - the SIGTERM drain sequence around the app's lifespan: readiness 503 at
      once, serving for ``drain_delay`` more seconds, then the server's graceful
      shutdown (and the cluster's, in the lifespan shutdown).

    The cluster itself is started and stopped by the app's lifespan
    (``lifespan=cluster.lifespan``, or ``async with cluster.lifespan(app):``
    inside a lifespan of your own).

    Args:
        app: a ``starlette.applications.Starlette`` (``fastapi.FastAPI`` is one).
        cluster: the application's cluster.
        drain_delay: seconds to keep serving after SIGTERM; default
            ``cluster.config.drain_delay`` (``COVEY_DRAIN_DELAY``, 5 s).
        require_tenant: passed to :class:`~covey.context.RequestContextMiddleware`.
        tenant_resolver: passed to :class:`~covey.context.RequestContextMiddleware`.
        user_resolver: passed to :class:`~covey.context.RequestContextMiddleware`.
        exempt_paths: passed to :class:`~covey.context.RequestContextMiddleware`.
        metrics: serve ``/metrics``.
        expose_internal: show the message and details of 500/502 answers
            (development only).

    Raises:
        ClusterError: ``invalid_argument`` if ``app`` is not a Starlette app, was
            given to ``install`` before, or ``drain_delay`` is negative.
    """
    try:
        from starlette.applications import Starlette
        from starlette.routing import Route
    except ImportError as exc:
        raise ImportError("covey.asgi.install() needs Starlette (FastAPI brings it): "
                          "pip install starlette") from exc
    if not isinstance(app, Starlette):
        raise ClusterError(
            f"covey.asgi.install() needs a Starlette or FastAPI app, got {type(app).__name__}; "
            "other frameworks can mount covey.asgi.ProbeEndpoint, "
            "covey.context.RequestContextMiddleware and covey.asgi.problem_for themselves",
            reason=Reason.INVALID_ARGUMENT, field="app")
    if getattr(app.state, "covey_installed", False):
        raise ClusterError("covey.asgi.install() was already called on this app",
                           reason=Reason.INVALID_ARGUMENT, field="app")
    delay = cluster.config.drain_delay if drain_delay is None else drain_delay
    if not delay >= 0:
        raise ClusterError(f"drain_delay must be a number of seconds >= 0, got {delay!r}",
                           reason=Reason.INVALID_ARGUMENT, field="drain_delay")
    app.add_exception_handler(ClusterError, _error_handler(expose_internal))
    app.add_middleware(RequestContextMiddleware, cluster=cluster, require_tenant=require_tenant,
                       tenant_resolver=tenant_resolver, user_resolver=user_resolver,
                       exempt_paths=exempt_paths)
    routes: dict[str, Any] = {
        "/livez": ProbeEndpoint(lambda: cluster.health.live()),
        "/readyz": ProbeEndpoint(lambda: cluster.health.ready()),
        "/health": ProbeEndpoint(lambda: cluster.health.report()),
    }
    if metrics:
        routes["/metrics"] = metrics_app
    for path, endpoint in routes.items():
        app.router.routes.append(Route(path, endpoint, include_in_schema=False))
    app.router.lifespan_context = _with_draining(app.router.lifespan_context, cluster, delay)
    app.state.covey_installed = True


def _error_handler(expose_internal: bool) -> Callable[[Any, Exception], Any]:
    from starlette.responses import Response

    async def covey_error(request: Any, exc: Exception) -> Response:
        assert isinstance(exc, ClusterError)
        problem = problem_for(exc, expose_internal=expose_internal)
        log_problem(exc, problem)
        return Response(problem.encode(), status_code=problem.status, headers=problem.headers)

    return covey_error


def _with_draining(inner: Callable[[Any], Any], cluster: Cluster,
                   delay: float) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            _check_started(cluster)
            async with drain_on_sigterm(cluster, drain_delay=delay):
                yield state

    return lifespan


def _check_started(cluster: Any) -> None:
    try:
        cluster.sharding  # noqa: B018 - raises when the cluster is not started
    except ClusterError:
        raise ClusterError(
            "the app's lifespan did not start the cluster: pass lifespan=cluster.lifespan to "
            "the app, or enter 'async with cluster.lifespan(app):' in your own lifespan",
            reason=Reason.INVALID_ARGUMENT, field="lifespan") from None
