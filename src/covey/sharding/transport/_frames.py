"""Frames of the runner-to-runner wire protocol.

Each frame is a 4-byte big-endian unsigned length followed by that many bytes of
one msgpack map. The map's ``"t"`` key names the kind:

=============  ==========================  =====================================
kind           keys                        meaning
=============  ==========================  =====================================
``challenge``  ``n`` (16-byte nonce)       server → client, first frame
``hello``      ``mac``, ``a``, ``v``,      client → server: HMAC of the nonce,
               ``m``                       advertised ``[host, port]`` or None,
                                           protocol version, its frame limit
``welcome``    ``m``                       server → client: authenticated; its
                                           frame limit
``denied``     ``m``                       server → client, then close
``req``        ``i`` (id), ``b`` (body)    a request expecting ``res`` or ``err``
``res``        ``i``, ``b``                the answer to request ``i``
``err``        ``i``, ``r``, ``m``, ``x``  request ``i`` failed: reason, message,
                                           details (``i`` is None when unknown)
``note``       ``b``                       a notification; never answered
``ping``                                   answered with ``pong``
``pong``
=============  ==========================  =====================================

Ids are ints; bodies (``b``) are maps with text keys. A frame in another shape
(unknown kind, wrong field types, undecodable bytes) is a protocol error and the
receiver drops the connection, with one exception: a ``req`` with an int id whose
body is not such a map is answered with an ``err`` (``payload_invalid``), so the
caller learns why and the connection lives on.

Encoding goes through one reused :class:`msgpack.Packer` per connection and
decoding parses straight out of the receive buffer, because this is the hot
path of every cross-runner call.
"""

from __future__ import annotations

import reprlib
import struct
from typing import Any, Final, TypeGuard

import msgpack

from covey.core import ClusterError, Reason, SerializationError, TransportError
from covey.sharding._wire_errors import error_fields

HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size
PROTOCOL_VERSION: Final = 1

CHALLENGE: Final = "challenge"
HELLO: Final = "hello"
WELCOME: Final = "welcome"
DENIED: Final = "denied"
REQ: Final = "req"
RES: Final = "res"
ERR: Final = "err"
NOTE: Final = "note"
PING: Final = "ping"
PONG: Final = "pong"

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_unpackb = msgpack.unpackb


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection cannot resync."""


class IncomingFrameTooLarge(FrameError):
    """A frame header announced more bytes than the receiver accepts.

    Attributes:
        size: the announced payload size in bytes.
        limit: the receiver's limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"incoming frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class FrameEncoder:
    """Packs frame maps into length-prefixed bytes, refusing oversized frames.

    Args:
        max_frame_bytes: the largest payload (excluding the 4-byte header) allowed.
    """

    __slots__ = ("_packer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        # One Packer reused for every frame: it keeps its buffer between calls
        # and resets it when packing fails, so a bad body cannot poison it.
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def encode(self, frame: dict[str, Any]) -> bytes:
        """The frame as header + msgpack bytes.

        Raises:
            TransportError: ``frame_too_large`` if the payload exceeds the limit.
            SerializationError: ``payload_invalid`` if a value cannot be encoded.
        """
        try:
            payload: bytes = self._packer.pack(frame)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot encode {frame.get('t')} frame: {exc}",
                reason=Reason.PAYLOAD_INVALID,
                error_type=type(exc).__name__,
            ) from exc
        size = len(payload)
        if size > self.max_frame_bytes:
            raise TransportError(
                f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}",
                reason=Reason.FRAME_TOO_LARGE,
                size=size,
                limit=self.max_frame_bytes,
            )
        return _pack_header(size) + payload


class FrameDecoder:
    """Splits a byte stream into decoded frame maps.

    Args:
        max_frame_bytes: the largest payload accepted; settable (a connection
            uses a small limit until the peer has authenticated).
    """

    __slots__ = ("_buffer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return every frame they complete, in order.

        Raises:
            IncomingFrameTooLarge: a header announced more than the limit.
            FrameError: a payload is not a msgpack map with a string ``"t"``.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            # Common case: nothing left over, so parse the received bytes in place
            # and only copy a trailing partial frame into the buffer.
            source = data
        end = len(source)
        pos = 0
        frames: list[dict[str, Any]] = []
        limit = self.max_frame_bytes
        view = memoryview(source)
        try:
            while end - pos >= HEADER_SIZE:
                (size,) = _unpack_header(source, pos)
                if size > limit:
                    raise IncomingFrameTooLarge(size, limit)
                start = pos + HEADER_SIZE
                stop = start + size
                if stop > end:
                    break
                frames.append(_decode(view[start:stop]))
                pos = stop
        finally:
            view.release()
        if source is buffer:
            if pos:
                del buffer[:pos]
        elif pos < end:
            buffer += data[pos:]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)


def _decode(payload: memoryview) -> dict[str, Any]:
    try:
        frame = _unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"malformed frame payload: {type(exc).__name__}: {exc}") from None
    if type(frame) is not dict or type(frame.get("t")) is not str:
        raise FrameError("frame is not a map with a string 't' kind")
    return frame


def is_body(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` may be a frame body: a map whose keys are all text."""
    if type(value) is not dict:
        return False
    # A plain loop: half the cost of all(...) on this hot path (every req and res).
    for key in value:  # noqa: SIM110
        if type(key) is not str:
            return False
    return True


def hello_problem(frame: dict[str, Any]) -> str | None:
    """What is wrong with an authenticated ``hello`` frame's fields, or None."""
    version = frame.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        return f"unsupported protocol version {brief(version)}"
    advertised = frame.get("a")
    if advertised is not None and not (
            type(advertised) is list and len(advertised) == 2
            and type(advertised[0]) is str and 0 < len(advertised[0]) <= 255
            and type(advertised[1]) is int and 0 < advertised[1] < 65536):
        return f"malformed advertised address {brief(advertised)}"
    return limit_problem(frame)


def limit_problem(frame: dict[str, Any]) -> str | None:
    """What is wrong with a ``hello``/``welcome`` frame's limit ``m`` (absent is fine)."""
    limit = frame.get("m")
    if limit is None or (type(limit) is int and limit > 0):
        return None
    return f"malformed frame limit {brief(limit)}"


_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 80


def brief(value: object) -> str:
    """A short repr of a value from the wire, for log lines (bounded size and depth)."""
    return _brief.repr(value)


def err_frame(rid: int | None, error: ClusterError) -> dict[str, Any]:
    """The ``err`` frame telling the peer that request ``rid`` failed with ``error``
    (``rid`` None: a frame the receiver could not even attribute)."""
    reason, message, details = error_fields(error)
    return {"t": ERR, "i": rid, "r": reason, "m": message, "x": details}


def decode_payload(frame: bytes) -> dict[str, Any]:
    """Decode one complete encoded frame (header included), e.g. for a local hop."""
    with memoryview(frame) as view:
        return _decode(view[HEADER_SIZE:])
