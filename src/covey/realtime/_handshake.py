"""The :class:`~covey.realtime.Handshake` of an ASGI scope (SSE request or WebSocket)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from covey.core import current_context
from covey.realtime._types import Handshake

#: header values longer than this are left out of the handshake (a hook never sees megabytes)
MAX_HANDSHAKE_VALUE = 8192


#: the WebSocket subprotocol that carries a bearer token (browsers cannot set headers)
BEARER_SUBPROTOCOL = "bearer."


def handshake_of(scope: Mapping[str, Any], *, token: str | None = None) -> Handshake:
    """What the hooks see of ``scope``: path, headers, query, peer, the request
    context's tenant (set by covey's request-context middleware) and the bearer
    token (``token``, else ``Authorization: Bearer``, else a ``bearer.<token>``
    WebSocket subprotocol). The token is taken out of ``headers`` (the
    ``authorization`` header, the ``bearer.`` subprotocol), so a hook that logs
    the headers does not log credentials."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or ():
        if len(raw_value) <= MAX_HANDSHAKE_VALUE:
            headers[bytes(raw_name).decode("latin-1").lower()] = bytes(raw_value).decode(
                "latin-1")
    bearer = bearer_of(headers)
    if bearer is not None:
        del headers["authorization"]
    offered = [str(p) for p in scope.get("subprotocols") or ()]
    for name in offered:
        if bearer is None and name.startswith(BEARER_SUBPROTOCOL) \
                and len(name) > len(BEARER_SUBPROTOCOL):
            bearer = name[len(BEARER_SUBPROTOCOL):]
    if "sec-websocket-protocol" in headers:
        headers["sec-websocket-protocol"] = ", ".join(
            p for p in offered if not p.startswith(BEARER_SUBPROTOCOL))
    raw_query = scope.get("query_string") or b""
    query = dict(parse_qsl(bytes(raw_query).decode("latin-1"), keep_blank_values=True)) \
        if len(raw_query) <= MAX_HANDSHAKE_VALUE else {}
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else None
    return Handshake(path=str(scope.get("path", "")), headers=headers, query=query,
                     client=peer, tenant=current_context().tenant_id,
                     token=token if token is not None else bearer)


def bearer_of(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None
