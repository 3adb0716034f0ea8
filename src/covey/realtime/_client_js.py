"""``client_js_app``: the browser client (``covey.js``, an ES module) served over HTTP.

Mount it where pages import it from::

    app.mount("/covey.js", covey.realtime.client_js_app())
    # <script type="module"> import { connect, subscribe } from "/covey.js"; </script>

It answers GET and HEAD under its mount with the module (``text/javascript``,
an ``ETag`` of its content; ``If-None-Match`` gets 304), other methods 405.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from covey.core.runtime import answer_lifespan
from covey.realtime._ws_asgi import Receive, Scope, Send, answer_http

CONTENT_TYPE = b"text/javascript; charset=utf-8"


def client_js() -> bytes:
    """The source of ``covey.js`` as shipped in the package."""
    return resources.files("covey.realtime").joinpath("static/covey.js").read_bytes()


class ClientJsApp:
    """The ASGI app :func:`client_js_app` returns.

    Attributes:
        body: the module's bytes.
        etag: their strong ETag (quoted).
    """

    def __init__(self) -> None:
        self.body = client_js()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await answer_http(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        headers = [(b"etag", self.etag.encode()), (b"cache-control", b"no-cache"),
                   (b"x-content-type-options", b"nosniff")]
        if self._matches(scope):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE), (b"content-length", str(len(self.body)).encode()),
            *headers]})
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" else self.body})

    def _matches(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if bytes(name).lower() == b"if-none-match":
                tags = {t.strip().removeprefix("W/") for t in bytes(value).decode(
                    "latin-1").split(",")}
                return "*" in tags or self.etag in tags
        return False


def client_js_app() -> ClientJsApp:
    """An ASGI app serving the browser client ``covey.js`` (see the module docstring)."""
    return ClientJsApp()
