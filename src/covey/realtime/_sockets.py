"""A listening socket whose connections detect dead and frozen peers on their own.

Long-lived connections (SSE, WebSocket) outlive the peers at their other end: a
laptop that went to sleep, a NAT that forgot the flow, a client that stopped
reading. Application heartbeats do not notice a half-open socket (the kernel
takes the bytes), so the socket itself must:

- **TCP keepalive** probes an idle connection and drops it when the peer stops
  answering (``keepalive_idle + keepalive_interval * keepalive_count`` seconds);
- **TCP_USER_TIMEOUT** (Linux) drops a connection whose sent data stays
  unacknowledged, or whose peer keeps a zero window, for that long: keepalive
  does not probe while data is in flight, and a frozen reader acknowledges the
  probes forever. It also frees the kernel buffers of a response the server gave
  up on (the transport only closes once its buffer is flushed).

Linux copies these options from the listening socket to every accepted one, so
setting them once here covers every connection uvicorn accepts from it::

    sock = listen_socket("0.0.0.0", 8000)
    await uvicorn.Server(uvicorn.Config(app)).serve(sockets=[sock])
"""

from __future__ import annotations

import socket

from covey.core.runtime import check_seconds, invalid_argument


def listen_socket(host: str, port: int, *, keepalive_idle: float = 30,
                  keepalive_interval: float = 10, keepalive_count: int = 3,
                  user_timeout: float | None = None, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket with keepalive (and ``SO_REUSEADDR``).

    Args:
        host: the address to bind (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``, a name).
        port: the port (0: any free port; read it from ``getsockname()``).
        keepalive_idle: seconds of silence before the first probe.
        keepalive_interval: seconds between probes.
        keepalive_count: unanswered probes before the connection is dropped.
        user_timeout: seconds sent data may stay unacknowledged before the
            kernel drops the connection (``TCP_USER_TIMEOUT``, where the platform
            has it). ``None``: the keepalive's own limit, ``keepalive_idle +
            keepalive_interval * keepalive_count``, as the keepalive alone would
            give an idle connection; ``0``: the system's default (about 15 min).
        backlog: the accept queue's length.

    Raises:
        ClusterError: ``invalid_argument`` for a negative or non-numeric option.
        OSError: the address cannot be bound.
    """
    idle = max(1, round(check_seconds("keepalive_idle", keepalive_idle, positive=True)))
    interval = max(1, round(check_seconds("keepalive_interval", keepalive_interval,
                                          positive=True)))
    if isinstance(keepalive_count, bool) or not isinstance(keepalive_count, int) \
            or not 1 <= keepalive_count <= 127:
        raise invalid_argument("keepalive_count", "must be an int from 1 to 127")
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
        raise invalid_argument("backlog", "must be a positive int")
    limit = idle + interval * keepalive_count if user_timeout is None \
        else check_seconds("user_timeout", user_timeout)
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Linux and the BSDs name the idle time TCP_KEEPIDLE, macOS TCP_KEEPALIVE
        idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(
            socket, "TCP_KEEPALIVE", None)
        for option, value in ((idle_option, idle),
                              (getattr(socket, "TCP_KEEPINTVL", None), interval),
                              (getattr(socket, "TCP_KEEPCNT", None), keepalive_count),
                              (getattr(socket, "TCP_USER_TIMEOUT", None),
                               round(limit * 1000))):
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
