"""Real-time delivery: streams served over SSE, typed RPC over WebSocket, per-user routing.

Items are rows first (``storage.streams``) with resumable ``<epoch>:<position>``
ids; the pods that hold a subscriber of a stream are pushed to over the runner
mesh; a safety re-read from the durable position after any gap loses nothing.
``cluster.streams`` publishes and subscribes, ``cluster.sse()`` serves streams
to browsers, ``cluster.websocket(Contract)`` serves a typed WebSocket contract,
``cluster.send_to_user`` reaches a user's connections on whichever pod holds
them. :func:`connect`, :func:`connect_sse` and ``static/covey.js`` are the
reconnecting clients.
"""

from covey.realtime._backoff import Backoff
from covey.realtime._client_js import ClientJsApp, client_js_app
from covey.realtime._contract import Contract, MethodSpec, Push, PushSpec, method, push
from covey.realtime._presence import Presence, UserConnection
from covey.realtime._sockets import listen_socket
from covey.realtime._sse import EventStreamResponse, sse_app
from covey.realtime._sse_client import SseClient, connect_sse
from covey.realtime._streams import Streams
from covey.realtime._types import Cursor, Handshake, Principal, Reset, StreamMessage, Subscription
from covey.realtime._ws_client import Client, connect
from covey.realtime._ws_client_calls import StreamCall
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_limits import WebSocketOptions
from covey.realtime._ws_server import WebSocketApp, websocket_app

__all__ = [
    "Backoff",
    "Client",
    "ClientJsApp",
    "Connection",
    "Contract",
    "Cursor",
    "EventStreamResponse",
    "Handshake",
    "MethodSpec",
    "Presence",
    "Principal",
    "Push",
    "PushSpec",
    "Reset",
    "SseClient",
    "StreamCall",
    "StreamMessage",
    "Streams",
    "Subscription",
    "UserConnection",
    "WebSocketApp",
    "WebSocketOptions",
    "client_js_app",
    "connect",
    "connect_sse",
    "listen_socket",
    "method",
    "push",
    "sse_app",
    "websocket_app",
]
