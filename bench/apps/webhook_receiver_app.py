"""The receiver of the ``webhooks`` benchmark: a plain ASGI app served by uvicorn.

``python -m uvicorn bench.apps.webhook_receiver_app:app --port N`` with the
endpoint's secret in ``BENCH_WEBHOOK_SECRET``. Every POST is checked with
:func:`covey.webhooks.verify` (no request is trusted unchecked: a receiver that
skipped the check would look faster than a real one), then answered 204.

Per request it keeps ``time.time()`` taken when the request reached the app
(uvicorn has parsed the headers; the body is read after) and the payload's
``data``: ``{"phase": ..., "n": ..., "sent": <the sender's time.time()>}``.
Only the first receipt of a ``webhook-id`` is a record; later ones count as
duplicates. Bad signatures are answered 401 and counted.

* ``GET /stats``: ``{"received": {phase: count}, "bad_signatures": n, "duplicates": n,
  "connections": n}`` (``connections``: distinct client ports of the POSTs, i.e. TCP
  connections the senders opened; few means keep-alive works).
* ``GET /records?phase=P``: ``{"rows": [[sent, received], ...]}`` of that phase.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from covey.core import WebhookError
from covey.webhooks import verify

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SECRET = os.environ.get("BENCH_WEBHOOK_SECRET", "")


class Records:
    """What arrived: first receipts by phase, duplicates and bad signatures."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.rows: dict[str, list[tuple[float, float]]] = {}
        self.counts: Counter[str] = Counter()
        self.duplicates = 0
        self.bad_signatures = 0
        self.connections: set[tuple[str, int]] = set()  # client (host, port): keep-alive reuse

    def add(self, webhook_id: str, data: dict[str, Any], received: float) -> None:
        if webhook_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(webhook_id)
        phase = str(data.get("phase"))
        self.rows.setdefault(phase, []).append((float(data.get("sent", 0.0)), received))
        self.counts[phase] += 1

    def stats(self) -> dict[str, Any]:
        return {"received": dict(self.counts), "bad_signatures": self.bad_signatures,
                "duplicates": self.duplicates, "connections": len(self.connections)}


records = Records()


async def _answer(send: Send, status: int, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point (HTTP only; run uvicorn with ``--lifespan off``)."""
    if scope["type"] != "http":
        return
    received = time.time()
    if scope["method"] == "GET":
        if scope["path"] == "/stats":
            await _answer(send, 200, json.dumps(records.stats()).encode())
        elif scope["path"] == "/records":
            phase = parse_qs(scope["query_string"].decode()).get("phase", [""])[0]
            rows = records.rows.get(phase, [])
            await _answer(send, 200, json.dumps({"rows": rows}).encode())
        else:
            await _answer(send, 404)
        return
    if scope.get("client"):
        records.connections.add(tuple(scope["client"]))
    body = await _body(receive)
    try:
        hook = verify(scope["headers"], body, SECRET)
    except WebhookError:  # signature or timestamp wrong
        records.bad_signatures += 1
        await _answer(send, 401)
        return
    records.add(hook.id, hook.json().get("data") or {}, received)
    await _answer(send, 204)
