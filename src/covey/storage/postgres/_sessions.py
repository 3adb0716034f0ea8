"""What every one of covey's own PostgreSQL sessions carries: a name and keepalives.

Sessions are named ``covey-<role>:<runner address>`` (roles ``pool``, ``writer``, ``lock``,
``listen``), so an operator finds a runner's sessions in ``pg_stat_activity``
and the liveness check finds each runner's lock session. The dedicated
connections (lock, listen) use TCP keepalives at both ends.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

#: PostgreSQL keeps the first 63 bytes of an ``application_name``.
MAX_APPLICATION_NAME = 63

#: Server-side TCP keepalives: the server drops the session of a vanished host
#: within about 15 s instead of holding its locks (or its LISTEN) for hours.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def session_name(role: str, runner: str | None) -> str:
    """The ``application_name`` of one of covey's sessions, e.g.
    ``covey-lock:10.0.0.5:7001``: operators find a runner's sessions in
    ``pg_stat_activity`` by it (and the liveness check finds the lock session)."""
    name = f"covey-{role}:{runner}" if runner else f"covey-{role}"
    return name[:MAX_APPLICATION_NAME]


def client_keepalive(conn: Any) -> None:
    """Turn keepalives on at the client end of ``conn`` too: a half-open
    connection to a vanished server must fail rather than hang."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
