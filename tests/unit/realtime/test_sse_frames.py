"""The SSE wire format: what the endpoint writes, and what the client's parser reads
(any conforming stream, split anywhere)."""

from __future__ import annotations

import pytest

from covey.core import RealtimeError, Reason
from covey.realtime import Cursor, Reset, StreamMessage
from covey.realtime._sse_frames import (
    PING,
    SseEvent,
    SseParser,
    message_frame,
    reset_frame,
    retry_frame,
)


def message(data: bytes, event: str | None = None) -> StreamMessage:
    return StreamMessage("orders", Cursor(7, 3), data, event, 1, 0.0)


def test_an_item_is_id_event_and_one_data_line_per_line() -> None:
    assert message_frame(message(b'{"a":1}')) == b'id: 7:3\ndata: {"a":1}\n\n'
    assert message_frame(message(b"one\ntwo\r\nthree\rfour", "created")) == (
        b"id: 7:3\nevent: created\ndata: one\ndata: two\ndata: three\ndata: four\n\n")


def test_a_line_break_in_an_event_name_cannot_forge_fields() -> None:
    frame = message_frame(message(b"{}", "x\ndata: forged\r\nid: 9:9"))
    assert frame == b"id: 7:3\nevent: x data: forged id: 9:9\ndata: {}\n\n"


def test_reset_retry_and_ping_frames() -> None:
    assert reset_frame(Reset("orders", Cursor(8, 0))) == (
        b'event: reset\nid: 8:0\ndata: {"cursor": "8:0"}\n\n')
    assert retry_frame(1000) == b"retry: 1000\n\n"
    assert PING == b": ping\n\n"


def test_the_parser_reads_back_what_the_endpoint_writes() -> None:
    wire = (message_frame(message(b"one\ntwo", "created")) + PING
            + reset_frame(Reset("orders", Cursor(8, 0))) + retry_frame(250))
    parser = SseParser()
    assert parser.feed(wire) == [
        SseEvent(event="created", data="one\ntwo", id="7:3"),
        SseEvent(event="reset", data='{"cursor": "8:0"}', id="8:0"),
    ]
    assert parser.retry == 250


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_ending_split_at_every_byte(newline: str) -> None:
    text = ("\ufeff: comment\nid: 1:1\ndata: é€\ndata:no space\nevent: e\n\n"
            "data: second\n\n").replace("\n", newline)
    wire = text.encode()
    expected = [SseEvent("e", "é€\nno space", "1:1"), SseEvent("message", "second", None)]
    for cut in range(len(wire) + 1):
        parser = SseParser()
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == expected, cut
    parser = SseParser()  # one byte at a time
    assert [e for i in range(len(wire)) for e in parser.feed(wire[i:i + 1])] == expected


def test_what_the_spec_ignores_is_ignored() -> None:
    parser = SseParser()
    events = parser.feed(b"id: 1:1\n\n"  # no data: nothing dispatched
                         b"retry: soon\n"  # not digits: ignored
                         b"unknown: field\nid: bad\x00id\ndata: x\n\n")
    assert events == [SseEvent("message", "x", None)]
    assert parser.retry is None


def test_an_event_or_line_over_the_limit_is_refused() -> None:
    parser = SseParser(max_event_chars=100)
    with pytest.raises(RealtimeError) as caught:
        parser.feed(b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n")
    assert caught.value.reason is Reason.FRAME_TOO_LARGE
    with pytest.raises(RealtimeError) as caught:
        SseParser(max_event_chars=100).feed(b"data: " + b"x" * 200)  # no line end yet
    assert caught.value.reason is Reason.FRAME_TOO_LARGE
