"""The HTTP side of the dashboard: what a request carries, and writing answers.

Pure ASGI, like covey's other small apps (no framework at runtime). Every
answer carries ``Server-Timing: app;dur=<ms>`` (request received to body
rendered), which ``bench/run.py dashboard`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from covey.core import ClusterError, Reason

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: the largest form body an action accepts
MAX_FORM_BYTES = 64 * 1024
HTML = b"text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class DashboardRequest:
    """What the authorization hook sees of a dashboard request.

    Attributes:
        method: ``GET`` or ``POST``.
        path: the path below the dashboard's mount point (``/jobs/42``).
        headers: lower-cased header names to values (the last of repeated ones).
        client: ``"host:port"`` of the peer, when known.
    """

    method: str
    path: str
    headers: dict[str, str]
    client: str | None = None


@dataclass
class Incoming:
    """One request being answered (the app's own view of the scope)."""

    method: str
    path: str  # below the mount point, always starting with "/"
    root: str  # the mount point: every link starts with it
    query: dict[str, str]
    headers: dict[str, str]
    client: str | None
    scope: Scope
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, scope: Scope) -> Incoming:
        path = str(scope.get("path", "") or "")
        root = str(scope.get("root_path", "") or "")
        # Starlette's Mount keeps the full path in ``path`` and the prefix in
        # ``root_path``; older servers strip it
        if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
            path = path[len(root):]
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            headers[bytes(name).decode("latin-1").lower()] = bytes(value).decode("latin-1")
        raw_query = bytes(scope.get("query_string") or b"").decode("latin-1")
        query = dict(parse_qsl(raw_query, keep_blank_values=False))
        peer = scope.get("client")
        client = f"{peer[0]}:{peer[1]}" if peer else None
        return cls(str(scope.get("method", "GET")).upper(), "/" + path.lstrip("/"),
                   root.rstrip("/"), query, headers, client, scope)

    def public(self) -> DashboardRequest:
        return DashboardRequest(self.method, self.path, dict(self.headers), self.client)

    def timing(self) -> tuple[bytes, bytes]:
        elapsed = (time.perf_counter() - self.started) * 1000
        return b"server-timing", f"app;dur={elapsed:.2f}".encode()


async def read_form(receive: Receive) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (the last of repeated).

    Raises:
        ClusterError: ``invalid_argument`` for a body over :data:`MAX_FORM_BYTES`
            or one that is not UTF-8.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = bytes(message.get("body") or b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise ClusterError(f"the form is larger than {MAX_FORM_BYTES} bytes",
                               reason=Reason.INVALID_ARGUMENT, field="body")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ClusterError("the form is not UTF-8", reason=Reason.INVALID_ARGUMENT,
                           field="body") from None
    return dict(parse_qsl(text, keep_blank_values=True))


async def respond(send: Send, request: Incoming, status: int, body: bytes, *,
                  content_type: bytes = HTML,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole answer, with ``Server-Timing`` measured now."""
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
           (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), request.timing(), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def redirect(send: Send, request: Incoming, location: str, *,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """``303 See Other`` to ``location`` (a path that starts with the mount point)."""
    await respond(send, request, 303, b"", headers=[
        (b"location", location.encode("utf-8")), *(headers or [])])
