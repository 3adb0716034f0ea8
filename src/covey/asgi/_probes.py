"""The probe endpoints: ``/livez``, ``/readyz`` and ``/health`` as plain ASGI apps.

Each answers from ``cluster.health``'s cached results (the checks run in the
background at a fixed interval), so a probe or a scrape never touches the
database: ``200`` when the probe passes, ``503`` when it fails, the body in
``application/health+json``. Pure ASGI, so they mount in any framework.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from covey.asgi._json import json_safe

log = logging.getLogger("covey.asgi")

HEALTH_CONTENT_TYPE = "application/health+json"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Probe(Protocol):
    """A probe's answer (``covey.health.Probe``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def body(self) -> Any: ...


class ProbeEndpoint:
    """An ASGI app answering ``GET``/``HEAD`` with ``probe()``.

    Args:
        probe: computes the answer from cached results; must not do I/O.
    """

    def __init__(self, probe: Callable[[], Probe]) -> None:
        self._probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _answer(send, 405, b'{"status": "fail", "output": "use GET"}',
                          extra=[(b"allow", b"GET, HEAD")])
            return
        try:
            answer = self._probe()
            status, body = (200 if answer.ok else 503), json_safe(answer.body)
        except Exception as exc:  # a broken check must not turn a probe into a 500 loop
            log.exception("probe %s failed", scope.get("path"))
            status, body = 503, {"status": "fail", "output": f"{type(exc).__name__}: {exc}"}
        payload = json.dumps(body, default=str).encode()
        await _answer(send, status, b"" if scope.get("method") == "HEAD" else payload,
                      length=len(payload))


async def _answer(send: Send, status: int, body: bytes, *, length: int | None = None,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", HEALTH_CONTENT_TYPE.encode()),
                    (b"cache-control", b"no-store"),
                    (b"content-length", str(len(body) if length is None else length).encode()),
                    *(extra or [])],
    })
    await send({"type": "http.response.body", "body": body})
