"""What covey's assembly wires for real-time delivery; not for applications."""

from covey.realtime._contract import Contract
from covey.realtime._hub import STREAM_ROUTE, StreamHub
from covey.realtime._presence import MAIL_KIND, USER_KIND, USER_ROUTE, Presence
from covey.realtime._report import ConnectionCounts, ConnectionReport, read_connections
from covey.realtime._retention import StreamTrimmer
from covey.realtime._serving import cluster_websocket
from covey.realtime._streams import ITEMS_KIND, POKE_KIND, Streams
from covey.realtime._ws_server import WebSocketApp

__all__ = [
    "ConnectionCounts",
    "ConnectionReport",
    "Contract",
    "ITEMS_KIND",
    "MAIL_KIND",
    "POKE_KIND",
    "Presence",
    "STREAM_ROUTE",
    "StreamHub",
    "StreamTrimmer",
    "Streams",
    "USER_KIND",
    "USER_ROUTE",
    "WebSocketApp",
    "cluster_websocket",
    "read_connections",
]
