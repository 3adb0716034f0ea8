"""``covey dashboard``: the operators' dashboard, served standalone.

Joins the cluster named by the ``COVEY_*`` settings as a client-only member
(it hosts nothing) and serves ``cluster.dashboard()`` with uvicorn
(``pip install 'covey[dashboard]'``). Who may use it: HTTP Basic auth with
``--token`` (any user name, the token as the password; the user name is the
operator in the audit log), or ``--dev`` on a loopback address only (no
authentication, operator ``development``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import click

from covey.cli._output import guarded
from covey.cluster import Cluster
from covey.core import CoveyConfig
from covey.dashboard import DashboardRequest

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
REALM = b'Basic realm="covey dashboard", charset="UTF-8"'


def basic_user(headers: dict[str, str], token: str) -> str | None:
    """The user name of a Basic ``Authorization`` header whose password is ``token``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep or not hmac.compare_digest(password.encode(), token.encode()):
        return None
    return user or "operator"


def with_basic_auth(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` behind HTTP Basic auth: a request without the token gets 401 and a prompt."""

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
                       for k, v in scope.get("headers") or ()}
            if basic_user(headers, token) is None:
                body = b"covey dashboard: sign in (any user name, the token as password)\n"
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"www-authenticate", REALM), (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _serve(host: str, port: int, token: str | None, as_json: bool) -> None:
    import uvicorn

    async with Cluster(CoveyConfig.from_env(), client_only=True) as cluster:
        if token is not None:
            def authorize(request: DashboardRequest) -> str | None:
                return basic_user(request.headers, token)
            app: ASGIApp = with_basic_auth(cluster.dashboard(authorize=authorize), token)
        else:
            app = cluster.dashboard(development=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off",
                                               log_level="info"))
        url = f"http://{host}:{port}/"
        auth = "basic" if token else "none (development mode)"
        click.echo(json.dumps({"event": "serving", "url": url, "auth": auth}) if as_json
                   else f"covey dashboard on {url} "
                        f"({'Basic auth' if token else 'development mode: no authentication'})")
        sys.stdout.flush()
        await server.serve()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8089, show_default=True,
              help="Port to listen on.")
@click.option("--token", envvar="COVEY_DASHBOARD_TOKEN", default=None,
              help="Require HTTP Basic auth with this password (any user name; the user "
                   "name is logged as the operator) [env COVEY_DASHBOARD_TOKEN].")
@click.option("--dev", is_flag=True,
              help="No authentication (operator 'development'): loopback hosts only.")
@click.option("--json", "as_json", is_flag=True,
              help='Announce the address as one JSON line ({"event": "serving", "url": ..., '
                   '"auth": ...}) and errors as JSON.')
def dashboard(host: str, port: int, token: str | None, dev: bool, as_json: bool) -> None:
    """Serve the operators' dashboard against the configured database.

    Joins as a client-only member (COVEY_* settings) and serves with uvicorn
    until Ctrl-C. Give --token (or COVEY_DASHBOARD_TOKEN), or --dev on a
    loopback host.
    """
    if token is not None and dev:
        raise click.UsageError("give --token or --dev, not both")
    if token is None and not dev:
        raise click.UsageError("the dashboard needs authentication: give --token TOKEN (or "
                               "set COVEY_DASHBOARD_TOKEN), or --dev on a loopback host for "
                               "development")
    if token is not None and not token:
        raise click.UsageError("the token is empty")
    if dev and not is_loopback(host):
        raise click.UsageError(f"--dev serves without authentication: only on a loopback "
                               f"host (127.0.0.1, ::1, localhost), not {host!r}")
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.UsageError("covey dashboard serves with uvicorn: "
                               "pip install 'covey[dashboard]'") from None
    # uvicorn re-raises the Ctrl-C it handled: a normal end
    with contextlib.suppress(KeyboardInterrupt):
        guarded(lambda: asyncio.run(_serve(host, port, token, as_json)), as_json=as_json)
