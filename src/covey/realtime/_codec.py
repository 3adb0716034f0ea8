"""The wire of covey's WebSocket RPC (``covey.v1``): frames and their two codecs.

Every frame is a map with a type ``t``; ``id`` is the caller's request id, an
integer in ``[0, 2**53)`` (JavaScript-safe), unique among its calls in flight::

    client -> server
      {"t":"auth","token":"..."}            first frame, when the token came neither as an
                                            ``Authorization: Bearer`` header nor as the
                                            ``bearer.<token>`` subprotocol
      {"t":"req","id":n,"m":"send","p":{...}}   call a method (``p`` absent or null when
                                            the method takes no argument)
      {"t":"cancel","id":n}                 stop a call (a stream): the server answers
                                            ``end`` if it was still running, else nothing
      {"t":"ping"} / {"t":"pong"}           keepalive, either way: a ping is answered
                                            with a pong
      {"t":"ack","mids":["...",...]}        pushes received (their ``mid``): a stored
                                            message is deleted from the user's mailbox
                                            once acknowledged; 1 to 1000 ids of 1 to 200
                                            characters (clients batch them)
    server -> client
      {"t":"res","id":n,"p":...}            the result (null for none)
      {"t":"chunk","id":n,"p":...}          one item of a streamed reply ...
      {"t":"end","id":n}                    ... and its end
      {"t":"err","id":n|null,"r":reason,"msg":"...","d":{...}}   the call (or, with a null
                                            id, a frame that named none) failed; ``r`` is a
                                            :class:`~covey.Reason` value, ``d`` optional
                                            details (``fields`` of a failed validation)
      {"t":"push","n":name,"p":{...},"mid":"..."}   a push; ``mid`` (optional) identifies
                                            a message that may come twice (clients drop a
                                            repeat) and is acknowledged (``ack``)

Codecs, chosen by the WebSocket subprotocol (the server echoes the one it
took), else by the query parameter ``?codec=json|msgpack``, else JSON:

- ``covey.v1.json`` (or ``covey.v1``): UTF-8 JSON in text frames;
- ``covey.v1.msgpack``: msgpack in binary frames.

Payloads are pydantic's JSON-mode dump in both (datetimes, UUIDs and Decimals
are strings), so both codecs carry the same values. A client that cannot set
headers (a browser) sends its token as a second subprotocol,
``bearer.<token>``; the server never echoes that one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from covey.core import RealtimeError, Reason

PROTOCOL = "covey.v1"
JSON_SUBPROTOCOL = "covey.v1.json"
MSGPACK_SUBPROTOCOL = "covey.v1.msgpack"
BEARER_PREFIX = "bearer."
#: the largest request id (JavaScript's Number.MAX_SAFE_INTEGER)
MAX_ID = 2**53 - 1
#: the longest error message a frame carries (characters)
MAX_MESSAGE = 1000
#: the most ids one ``ack`` frame carries
MAX_ACK_MIDS = 1000
#: the longest message id (``mid``, characters)
MAX_MID = 200
CodecName = Literal["json", "msgpack"]

# close codes (RFC 6455 section 7.4 and covey's 44xx, after HTTP's 401 and 403)
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008          # persistent abuse of the rate limit
CLOSE_TOO_BIG = 1009         # the ASGI server refused a frame above its own limit
CLOSE_INTERNAL = 1011        # the authentication hook failed
CLOSE_RESTART = 1012         # the pod drains: reconnect (to another pod)
CLOSE_TRY_AGAIN = 1013       # the send queue overflowed: reconnect
CLOSE_UNAUTHENTICATED = 4401  # no valid credential, or it expired: do not retry as is
CLOSE_FORBIDDEN = 4403       # authenticated, but not allowed: do not retry
#: the close reason of a credential that expired (a client with a token source retries)
EXPIRED_REASON = "token expired"
Wire = str | bytes


class FrameCodec:
    """How frames become WebSocket messages (see the module docstring)."""

    name: CodecName
    subprotocol: str
    binary: bool

    def encode(self, frame: dict[str, Any]) -> Wire:
        """The message carrying ``frame`` (plain JSON-compatible data)."""
        raise NotImplementedError

    def decode(self, data: Wire) -> Any:
        """The value a message carries.

        Raises:
            RealtimeError: ``frame_invalid`` when it cannot be decoded.
        """
        raise NotImplementedError


class JsonFrames(FrameCodec):
    """UTF-8 JSON in text frames (``covey.v1.json``)."""

    name: CodecName = "json"
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def encode(self, frame: dict[str, Any]) -> str:
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def decode(self, data: Wire) -> Any:
        try:
            return json.loads(data)
        # RecursionError: nesting deeper than the parser's stack; ValueError: bad JSON,
        # bad UTF-8, or an integer of more digits than Python converts
        except (ValueError, RecursionError):
            raise RealtimeError("the frame is not valid JSON", reason=Reason.FRAME_INVALID) \
                from None


class MsgpackFrames(FrameCodec):
    """msgpack in binary frames (``covey.v1.msgpack``)."""

    name: CodecName = "msgpack"
    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True

    def encode(self, frame: dict[str, Any]) -> bytes:
        return bytes(msgpack.packb(frame, use_bin_type=True))

    def decode(self, data: Wire) -> Any:
        if isinstance(data, str):
            raise RealtimeError("a msgpack connection takes binary frames",
                                reason=Reason.FRAME_INVALID)
        try:
            return msgpack.unpackb(data, raw=False)
        except Exception:  # msgpack raises ValueError, StackError, ExtraData, FormatError...
            raise RealtimeError("the frame is not valid msgpack", reason=Reason.FRAME_INVALID) \
                from None


JSON = JsonFrames()
MSGPACK = MsgpackFrames()
CODECS: dict[str, FrameCodec] = {"json": JSON, "msgpack": MSGPACK}
_BY_SUBPROTOCOL: dict[str, FrameCodec] = {
    PROTOCOL: JSON, JSON_SUBPROTOCOL: JSON, MSGPACK_SUBPROTOCOL: MSGPACK}


def too_large(data: Wire, limit: int) -> bool:
    """Whether the message ``data`` is longer than ``limit`` bytes (UTF-8 for text)."""
    if isinstance(data, bytes) or len(data) > limit:
        return len(data) > limit
    # n characters are n to 4n bytes: encode only when that may matter
    return len(data) * 4 > limit and len(data.encode("utf-8", "replace")) > limit


def negotiate(offered: Iterable[str], codec: str | None) -> tuple[FrameCodec, str | None] | None:
    """The codec of a connection and the subprotocol to echo.

    Args:
        offered: the subprotocols the client offered, in its order.
        codec: the ``codec`` query parameter, if any.

    Returns:
        ``(codec, subprotocol)``: the first covey subprotocol offered (echoed),
        else the query's codec, else JSON (nothing echoed); ``None`` when the
        query names an unknown codec.
    """
    for name in offered:
        found = _BY_SUBPROTOCOL.get(name)
        if found is not None:
            return found, name
    if codec is None or codec == "":
        return JSON, None
    chosen = CODECS.get(codec)
    return None if chosen is None else (chosen, None)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A client frame that parsed: ``kind`` is ``req``, ``cancel``, ``ping``,
    ``pong``, ``auth`` or ``ack``; the other fields are set as the kind has them."""

    kind: str
    id: int | None = None
    method: str | None = None
    params: Any = None
    token: str | None = None
    mids: tuple[str, ...] = ()


class FrameRefused(Exception):
    """A client frame that cannot be served: answered with an error frame."""

    def __init__(self, reason: Reason, message: str, call_id: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.call_id = call_id
        self.details = details


def _valid_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return None


def parse_frame(value: Any) -> Inbound:
    """The client frame ``value`` (a decoded message) is.

    Raises:
        FrameRefused: ``frame_invalid`` for anything but a map of a known type with
            well-formed fields; its ``call_id`` is the frame's id when that is valid.
    """
    if not isinstance(value, dict):
        raise FrameRefused(Reason.FRAME_INVALID, "a frame is a map")
    kind = value.get("t")
    call_id = _valid_id(value.get("id"))
    if kind in ("ping", "pong"):
        return Inbound(kind)
    if kind == "req":
        if call_id is None:
            raise FrameRefused(Reason.FRAME_INVALID,
                               "a request needs an integer id in [0, 2**53)")
        name = value.get("m")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise FrameRefused(Reason.FRAME_INVALID, "a request needs a method name 'm'",
                               call_id)
        return Inbound("req", call_id, name, value.get("p"))
    if kind == "cancel":
        if call_id is None:
            raise FrameRefused(Reason.FRAME_INVALID, "a cancel needs an integer id in [0, 2**53)")
        return Inbound("cancel", call_id)
    if kind == "auth":
        token = value.get("token")
        if not isinstance(token, str) or not token:
            raise FrameRefused(Reason.FRAME_INVALID, "an auth frame needs a string 'token'")
        return Inbound("auth", token=token)
    if kind == "ack":
        return Inbound("ack", mids=_mids_of(value.get("mids")))
    shown = repr(kind)[:40] if isinstance(kind, str) else type(kind).__name__
    raise FrameRefused(Reason.FRAME_INVALID, f"unknown frame type {shown}", call_id)


def _mids_of(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_ACK_MIDS:
        raise FrameRefused(Reason.FRAME_INVALID,
                           f"an ack needs a list 'mids' of 1 to {MAX_ACK_MIDS} ids")
    if not all(isinstance(mid, str) and 0 < len(mid) <= MAX_MID for mid in value):
        raise FrameRefused(Reason.FRAME_INVALID,
                           f"an acked id is a string of 1 to {MAX_MID} characters")
    return tuple(value)


def error_frame(call_id: int | None, reason: Reason | str, message: str,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``err`` frame (the message cut to :data:`MAX_MESSAGE` characters)."""
    frame: dict[str, Any] = {"t": "err", "id": call_id, "r": str(reason),
                             "msg": message[:MAX_MESSAGE]}
    if details:
        frame["d"] = details
    return frame


def plain_details(details: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of an error's details (strings, numbers, booleans and
    lists of those), so any codec can carry them."""
    simple = (str, int, float, bool, type(None))
    kept: dict[str, Any] = {}
    for key, value in list(details.items())[:20]:
        if isinstance(value, str):
            kept[str(key)] = value[:MAX_MESSAGE]
        elif isinstance(value, float):
            if math.isfinite(value):
                kept[str(key)] = value
        elif isinstance(value, simple) and not (isinstance(value, int) and abs(value) > MAX_ID):
            kept[str(key)] = value
        elif isinstance(value, list | tuple) and all(
                isinstance(v, str) and len(v) <= MAX_MESSAGE for v in value[:20]):
            kept[str(key)] = list(value[:20])
    return kept
