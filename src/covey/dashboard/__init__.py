"""The operators' web dashboard: what the cluster runs, and the buttons to fix it.

``cluster.dashboard(authorize=...)`` returns a :class:`Dashboard`, a pure ASGI
app the application mounts behind its own authentication (``covey dashboard``
serves it standalone). Its pages are rendered on the server (Jinja2, autoescaped)
and kept current over covey's own SSE by the vendored htmx (no JavaScript build
step): runners, the shard map, active entities, jobs, workflows, event groups,
webhooks, crons and singletons, health. It reads the cluster through
:class:`DashboardSource` with bounded queries (pages of 50, capped counts), and
every mutation asks for confirmation, goes through the public Python API and is
logged with the operator's name. See ``docs/dashboard.md``.
"""

from covey.dashboard._app import Authorize, Dashboard
from covey.dashboard._http import DashboardRequest
from covey.dashboard._source import DashboardSource

__all__ = ["Authorize", "Dashboard", "DashboardRequest", "DashboardSource"]
