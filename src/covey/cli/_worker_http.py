"""The small HTTP endpoint of a worker pod: ``/metrics`` and the probes.

A worker pod (``covey run module:cluster``) serves no web application, yet
Prometheus scrapes it and Kubernetes probes it. ``covey run --metrics-port``
(or ``covey serve-metrics``) serves, on its own port:

- ``GET /metrics``: the Prometheus registry (covey's metrics, ``process_*``,
  ``python_*``), OpenMetrics when the ``Accept`` header asks for it;
- ``GET /livez``, ``/readyz``, ``/health``: the cluster's probes
  (``docs/health.md``), 200 or 503, ``application/health+json``.

It is a deliberately tiny HTTP/1.1 server on asyncio (one request per
connection, ``Connection: close``, bounded request size and read time), so a
worker image needs no web framework. Probes read cached results: no request
touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("covey.cli")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0
HEALTH_CONTENT_TYPE = "application/health+json"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class WorkerEndpoint:
    """Serves ``/metrics`` and the probes of ``cluster`` on ``host:port``.

    Args:
        cluster: any object with a ``health`` (``live()``, ``ready()``,
            ``report()`` returning probes with ``ok`` and ``body``); ``None``:
            metrics only.
        host: the interface to listen on (``0.0.0.0`` in a pod).
        port: the port (0 picks a free one; see :attr:`port` after start).
    """

    def __init__(self, cluster: Any, host: str, port: int) -> None:
        self._cluster = cluster
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_REQUEST_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                await _write(writer, 400, b"bad request\n", "text/plain; charset=utf-8")
                return
            status, body, content_type, method = self._answer(head)
            await _write(writer, status, b"" if method == "HEAD" else body, content_type,
                         length=len(body))
        except (ConnectionError, OSError):
            pass  # the client went away
        except Exception:
            log.exception("the worker HTTP endpoint failed to answer")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, bytes, str, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return 400, b"bad request\n", "text/plain; charset=utf-8", "GET"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", "text/plain; charset=utf-8", method
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        path = urlsplit(target).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, encoder(REGISTRY), content_type, method
        probe = self._probe(path)
        if probe is None:
            return 404, b"not found\n", "text/plain; charset=utf-8", method
        body = json.dumps(probe.body, default=str).encode()
        return (200 if probe.ok else 503), body, HEALTH_CONTENT_TYPE, method

    def _probe(self, path: str) -> Any:
        health = getattr(self._cluster, "health", None)
        if health is None:
            return None
        probes = {"/livez": health.live, "/readyz": health.ready, "/health": health.report}
        probe = probes.get(path)
        return None if probe is None else probe()


async def _write(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                 *, length: int | None = None) -> None:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
