"""The dashboard ASGI app: routing, authorization, CSRF, confirmation, audit.

Every request is authorized first (the ``authorize`` hook names the operator, or
refuses: 403), then routed:

- ``GET /<view>`` and ``/<view>/<id>``: a page (the view's live fragment inside
  a region that ``GET /live/<view>`` keeps current over SSE);
- ``POST /actions/<action>``: a mutation. Checked (CSRF token, fields: 400),
  then a confirmation page unless ``confirm=yes``; with it, performed through
  the public API, logged on ``covey.dashboard`` (``dashboard: <operator>
  <action> <target> -> <outcome>``) and answered with a 303 to the view, whose
  next page shows the outcome (a covey error too, never a 500) as a flash.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from covey.core import Clock, ClusterError, Reason, SystemClock, VersionConflict
from covey.core.runtime import answer_lifespan, invalid_argument
from covey.dashboard._actions import ACTIONS
from covey.dashboard._http import (
    DashboardRequest,
    Incoming,
    Receive,
    Scope,
    Send,
    read_form,
    redirect,
    respond,
)
from covey.dashboard._live import LiveFeed
from covey.dashboard._render import environment
from covey.dashboard._source import DashboardSource
from covey.dashboard._views import NAV, View
from covey.dashboard._views_cluster import VIEWS as CLUSTER
from covey.dashboard._views_delivery import VIEWS as DELIVERY
from covey.dashboard._views_jobs import VIEWS as JOBS
from covey.dashboard._views_schedules import VIEWS as SCHEDULES
from covey.dashboard._views_workflows import VIEWS as WORKFLOWS
from covey.realtime import EventStreamResponse

log = logging.getLogger("covey.dashboard")

#: ``authorize(request)``: the operator's name, or ``None`` to refuse (403)
Authorize = Callable[[DashboardRequest], "str | Awaitable[str | None] | None"]
DEVELOPMENT_OPERATOR = "development"
FLASH_COOKIE = "covey_dashboard_flash"
#: where the signing secret every pod shares lives in the state store
SECRET_KEY = "covey.dashboard/secret"
#: live feeds one dashboard serves at once (each renders its view every refresh)
MAX_LIVE = 100

VIEWS: dict[str, View] = {v.name: v for v in (*CLUSTER, *JOBS, *WORKFLOWS, *DELIVERY,
                                                  *SCHEDULES)}
#: ``/<prefix>/<id>``: the detail view of a list
DETAIL = {"jobs": "job", "workflows": "workflow", "events": "group", "webhooks": "endpoint"}
STATIC = {"htmx.min.js": "text/javascript", "sse.min.js": "text/javascript",
          "dashboard.css": "text/css"}


class _Refused(Exception):
    """An answer other than the page: a status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    """The dashboard as an ASGI app (see the module docstring): ``cluster.dashboard()``.

    Args:
        source: the cluster member it reads and acts through (a :class:`covey.Cluster`).
        authorize: ``authorize(DashboardRequest)`` (sync or async) returns the
            operator's name, or ``None`` to refuse the request (403).
        development: serve without ``authorize`` (operator ``"development"``):
            never in production.
        closing: set when the pod drains: live feeds end.
        refresh: seconds between two renders of a live fragment.
        clock: the time source.

    Raises:
        ClusterError: ``invalid_argument`` without ``authorize`` outside
            development mode.
    """

    def __init__(self, source: DashboardSource, *, authorize: Authorize | None = None,
                 development: bool = False, closing: asyncio.Event | None = None,
                 refresh: float = 2.0, clock: Clock | None = None) -> None:
        if authorize is None and not development:
            raise invalid_argument(
                "authorize", "the dashboard needs an authorization hook: "
                "cluster.dashboard(authorize=fn), fn(request) returning the operator's name "
                "or None; or cluster.dashboard(development=True) on a developer's machine")
        if authorize is not None and not callable(authorize):
            raise invalid_argument("authorize", f"{authorize!r} is not callable")
        self._source = source
        self._authorize = authorize
        self._closing = closing
        self._refresh = refresh
        self._clock = clock or SystemClock()
        # The CSRF tokens and flash cookies are signed with one secret shared by every
        # pod through the state store (read on the first request): a form rendered by
        # one pod and posted to another behind a load balancer is accepted.
        self._secret = b""
        self._env = environment()
        self._live = 0

    # ---- ASGI ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request = Incoming.of(scope)
        try:
            await self._answer(request, receive, send)
        except _Refused as exc:
            await self._error(send, request, exc.status, str(exc))
        except ClusterError as exc:
            status = _status_of(exc)
            await self._error(send, request, status, f"{exc.reason.value}: {exc}")
        except Exception:
            log.exception("dashboard: %s %s failed", request.method, request.path)
            await self._error(send, request, 500, "the dashboard failed to answer "
                              "(the error is logged on covey.dashboard)")

    async def _shared_secret(self) -> bytes:
        state = self._source.storage.state
        for _ in range(3):
            found = await state.get(SECRET_KEY)
            if found is not None:
                return found.value
            try:
                await state.set(SECRET_KEY, secrets.token_bytes(32), expected_version=None)
            except VersionConflict:
                continue  # another pod wrote it first: read theirs
        raise ClusterError("the dashboard could not read its signing secret from the "
                           "state store", reason=Reason.STORAGE_UNAVAILABLE)

    async def _answer(self, request: Incoming, receive: Receive, send: Send) -> None:
        if not self._secret:
            self._secret = await self._shared_secret()
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "static":
            await self._static(send, request, parts[1])
            return
        operator = await self._operator(request)
        if not parts:
            await redirect(send, request, f"{request.root}/runners")
            return
        if parts[0] == "actions" and len(parts) == 2:
            if request.method != "POST":
                raise _Refused(405, "actions take POST")
            await self._act(send, request, receive, operator, parts[1])
            return
        if request.method != "GET":
            raise _Refused(405, "pages take GET")
        if parts[0] == "live" and len(parts) == 2 and parts[1] in VIEWS:
            await self._serve_live(request, receive, send, operator, VIEWS[parts[1]])
            return
        params = dict(request.query)
        if len(parts) == 1 and parts[0] in VIEWS and parts[0] not in DETAIL.values():
            view = VIEWS[parts[0]]
        elif len(parts) == 2 and parts[0] in DETAIL:
            view = VIEWS[DETAIL[parts[0]]]
            params["id"] = parts[1]
        else:
            raise _Refused(404, f"no page {request.path!r}")
        await self._page(send, request, operator, view, params)

    # ---- authorization ---------------------------------------------------

    async def _operator(self, request: Incoming) -> str:
        if self._authorize is None:
            return DEVELOPMENT_OPERATOR
        verdict = self._authorize(request.public())
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not isinstance(verdict, str) or not verdict:
            raise _Refused(403, "you are not allowed to use this dashboard")
        return verdict

    def _csrf(self, operator: str) -> str:
        return hmac.new(self._secret, operator.encode(), hashlib.sha256).hexdigest()

    # ---- pages -----------------------------------------------------------

    def _common(self, request: Incoming, operator: str) -> dict[str, Any]:
        return {"root": request.root, "operator": operator, "csrf": self._csrf(operator),
                "nav": NAV, "now": self._clock.now()}

    async def _page(self, send: Send, request: Incoming, operator: str, view: View,
                    params: dict[str, str]) -> None:
        data = await view.load(self._source, params, self._clock.now())
        live_query = urlencode(params)
        flash, clear = self._flash(request)
        body = self._env.get_template("page.html").render(
            **self._common(request, operator), **data, view=view.name, nav_active=view.nav,
            live_url=f"{request.root}/live/{view.name}" + (f"?{live_query}" if live_query else ""),
            forms=view.forms, flash=flash, params=params)
        await respond(send, request, 200, body.encode(), headers=clear)

    async def _fragment(self, request: Incoming, operator: str, view: View,
                        params: dict[str, str]) -> str:
        try:
            data = await view.load(self._source, params, self._clock.now())
        except ClusterError as exc:
            return self._env.get_template("live_error.html").render(
                message=f"{exc.reason.value}: {exc}")
        return self._env.get_template(f"views/{view.name}.html").render(
            **self._common(request, operator), **data, view=view.name, params=params)

    async def _serve_live(self, request: Incoming, receive: Receive, send: Send,
                          operator: str, view: View) -> None:
        if self._live >= MAX_LIVE:
            raise ClusterError(f"this dashboard serves {MAX_LIVE} live feeds already",
                               reason=Reason.RATE_LIMITED)
        self._live += 1

        def closed() -> None:
            self._live -= 1

        params = dict(request.query)
        feed = LiveFeed(view.name, lambda: self._fragment(request, operator, view, params),
                        refresh=self._refresh, clock=self._clock, on_close=closed)
        realtime = self._source.config.realtime
        try:
            response = EventStreamResponse(
                feed, heartbeat=realtime.heartbeat, send_timeout=realtime.send_timeout,
                closing=self._closing, headers=[(k.decode(), v.decode())
                                                for k, v in [request.timing()]])
        except BaseException:
            await feed.aclose()
            raise
        await response(request.scope, receive, send)

    async def _static(self, send: Send, request: Incoming, name: str) -> None:
        if name not in STATIC:
            raise _Refused(404, f"no file {name!r}")
        body = (resources.files("covey.dashboard") / "static" / name).read_bytes()
        await respond(send, request, 200, body, content_type=STATIC[name].encode(),
                      headers=[(b"cache-control", b"public, max-age=3600")])

    async def _error(self, send: Send, request: Incoming, status: int, message: str) -> None:
        body = self._env.get_template("error.html").render(
            root=request.root, nav=NAV, nav_active="", status=status, message=message,
            title={400: "Bad request", 403: "Forbidden", 404: "Not found",
                   405: "Method not allowed", 429: "Too many live feeds",
                   503: "Unavailable"}.get(status, "Error"))
        await respond(send, request, status, body.encode())

    # ---- actions ---------------------------------------------------------

    async def _act(self, send: Send, request: Incoming, receive: Receive, operator: str,
                   name: str) -> None:
        form = await read_form(receive)
        if not hmac.compare_digest(form.get("csrf", ""), self._csrf(operator)):
            raise _Refused(403, "the form's CSRF token is missing or wrong: reload the page "
                                "and try again")
        action = ACTIONS.get(name)
        if action is None:
            raise _Refused(400, f"no action {name!r}")
        fields = action.parse(form)  # a bad field: invalid_argument -> 400
        back = request.root + action.back(fields)
        if form.get("confirm") != "yes":
            body = self._env.get_template("confirm.html").render(
                **self._common(request, operator), nav_active="", title="Confirm",
                action=name, description=action.describe(fields), back=back,
                fields=[(k, v) for k, v in form.items() if k not in ("csrf", "confirm")])
            await respond(send, request, 200, body.encode())
            return
        target = action.target(fields)
        try:
            outcome = await action.perform(self._source, fields)
            kind = "ok"
        except ClusterError as exc:
            outcome, kind = f"{exc.reason.value}: {exc}", "error"
        log.info("dashboard: %s %s %s -> %s", operator, name, target,
                 outcome if kind == "ok" else f"failed ({outcome})")
        await redirect(send, request, back, headers=[self._set_flash(request, kind, outcome)])

    # ---- flash messages (a signed cookie, read once) -----------------------

    def _set_flash(self, request: Incoming, kind: str, text: str) -> tuple[bytes, bytes]:
        raw = base64.urlsafe_b64encode(json.dumps([kind, text[:1000]]).encode()).decode()
        mac = hmac.new(self._secret, raw.encode(), hashlib.sha256).hexdigest()[:32]
        path = request.root or "/"
        return (b"set-cookie", f"{FLASH_COOKIE}={raw}.{mac}; Path={path}; HttpOnly; "
                               "SameSite=Strict".encode())

    def _flash(self, request: Incoming) -> tuple[tuple[str, str] | None,
                                                 list[tuple[bytes, bytes]]]:
        value = _cookie(request.headers.get("cookie", ""), FLASH_COOKIE)
        if value is None:
            return None, []
        clear = [(b"set-cookie", f"{FLASH_COOKIE}=; Path={request.root or '/'}; Max-Age=0; "
                                 "HttpOnly; SameSite=Strict".encode())]
        raw, _, mac = value.partition(".")
        good = hmac.new(self._secret, raw.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, good):
            return None, clear
        try:
            kind, text = json.loads(base64.urlsafe_b64decode(raw.encode()))
        except ValueError:
            return None, clear
        return (str(kind), str(text)), clear


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _status_of(exc: ClusterError) -> int:
    """The page status for a covey error raised while loading a page."""
    if exc.details.get("not_found") or exc.reason in (
            Reason.JOB_NOT_FOUND, Reason.WORKFLOW_NOT_FOUND, Reason.WEBHOOK_ENDPOINT_NOT_FOUND,
            Reason.WEBHOOK_DELIVERY_NOT_FOUND, Reason.MESSAGE_NOT_FOUND):
        return 404
    if exc.reason is Reason.INVALID_ARGUMENT:
        return 400
    if exc.reason is Reason.RATE_LIMITED:
        return 429
    return 503
