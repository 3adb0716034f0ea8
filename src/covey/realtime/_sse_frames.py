"""The SSE wire format (WHATWG HTML, "Server-sent events"): frames out, events in.

What covey's SSE endpoint writes::

    id: <epoch>:<position>          one item (``event:`` only when the publisher named one;
    event: <event>                  one ``data:`` line per line of the JSON)
    data: <json>

    event: reset                    the cursor is gone (a new epoch, or out of retention):
    id: <epoch>:<position>          the client refetches its state, delivery goes on
    data: {"cursor": "<epoch>:<position>"}

    : ping                          a heartbeat (a comment) when idle

    retry: <ms>                     the last frame before the server closes the stream:
                                    reconnect after this many milliseconds

:class:`SseParser` reads any conforming stream (``\\r\\n``, ``\\r`` or ``\\n``
line ends, comments, ``retry:``, split anywhere across chunks) into
:class:`SseEvent` s, with a bound on the size of one event.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass

from covey.core import RealtimeError, Reason
from covey.realtime._types import Reset, StreamMessage

#: a heartbeat: a comment line, ignored by every SSE client
PING = b": ping\n\n"
#: the event name of a reset frame
RESET_EVENT = "reset"
#: the largest event :class:`SseParser` accepts (characters of its lines, all fields)
MAX_EVENT_CHARS = 16 * 1024 * 1024

_NEWLINE = re.compile(rb"\r\n|\r|\n")
_TEXT_NEWLINE = re.compile(r"\r\n|\r|\n")


def message_frame(message: StreamMessage) -> bytes:
    """The frame of one item: ``id:``, ``event:`` when set, one ``data:`` per line."""
    parts = [b"id: ", str(message.cursor).encode(), b"\n"]
    if message.event:
        # a line break in the event name would end the field early and let the
        # rest of the name forge fields of its own: fold it to a space
        parts += [b"event: ", _NEWLINE.sub(b" ", message.event.encode()), b"\n"]
    for line in _NEWLINE.split(message.data):
        parts += [b"data: ", line, b"\n"]
    parts.append(b"\n")
    return b"".join(parts)


def reset_frame(reset: Reset) -> bytes:
    """The ``event: reset`` frame of ``reset``."""
    cursor = str(reset.cursor)
    data = json.dumps({"cursor": cursor})
    return f"event: {RESET_EVENT}\nid: {cursor}\ndata: {data}\n\n".encode()


def retry_frame(retry_ms: int) -> bytes:
    """The ``retry:`` frame: the client reconnects after ``retry_ms`` milliseconds."""
    return b"retry: %d\n\n" % retry_ms


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event.

    Attributes:
        event: its type (``"message"`` when the frame had no ``event:`` line).
        data: the ``data:`` lines joined with ``\\n``.
        id: the frame's own ``id:`` field (``None``: the frame had none).
    """

    event: str
    data: str
    id: str | None


class SseParser:
    """An incremental SSE reader: :meth:`feed` bytes as they come, get events.

    Attributes:
        retry: the last ``retry:`` value received (milliseconds), ``None`` when
            none came since the caller last cleared it.
        lines: how many complete lines (comments included) it has read.
    """

    def __init__(self, *, max_event_chars: int = MAX_EVENT_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_event_chars
        self._tail = ""  # an unfinished line
        self._skip_lf = False  # the last chunk ended with "\r": a "\n" first is its pair
        self._at_start = True  # a byte-order mark is dropped at the start only
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._size = 0
        self.retry: int | None = None
        self.lines = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes, in order.

        Raises:
            RealtimeError: ``frame_too_large`` when one event (or one line)
                exceeds ``max_event_chars``.
        """
        text = self._decoder.decode(chunk)
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        if not text:
            return []
        events: list[SseEvent] = []
        pieces = _TEXT_NEWLINE.split(self._tail + text)
        self._tail = pieces.pop()
        if text.endswith("\r"):
            # "\r" ended a line, but a "\n" in the next chunk belongs to it
            self._skip_lf = True
        if len(self._tail) > self._max:
            raise RealtimeError(f"an SSE line exceeds {self._max} characters",
                                reason=Reason.FRAME_TOO_LARGE)
        for line in pieces:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        self.lines += 1
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: a heartbeat
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        self._size += len(line)
        if self._size > self._max:
            raise RealtimeError(f"an SSE event exceeds {self._max} characters",
                                reason=Reason.FRAME_TOO_LARGE)
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:  # the spec ignores such an id
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        # any other field is ignored, as the spec says
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event, event_id = self._data, self._event, self._id
        self._data, self._event, self._id, self._size = [], "", None, 0
        if not data:
            return None  # the spec dispatches nothing without a data line
        return SseEvent(event=event or "message", data="\n".join(data), id=event_id)
