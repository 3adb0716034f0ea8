from __future__ import annotations

import datetime as dt
import enum
import uuid

import pytest
from pydantic import BaseModel

from covey.core import JsonCodec, MsgpackCodec, Reason, SerializationError, codec_for


class Color(enum.Enum):
    RED = "red"


class Line(BaseModel):
    sku: str
    amount: int


class Order(BaseModel):
    id: uuid.UUID
    at: dt.datetime
    color: Color
    lines: list[Line]


CODECS = [MsgpackCodec(), JsonCodec()]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.format)
def test_models_and_plain_values_round_trip(codec: MsgpackCodec | JsonCodec) -> None:
    order = Order(id=uuid.uuid4(), at=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
                  color=Color.RED, lines=[Line(sku="a", amount=2)])
    assert codec.decode(codec.encode(order), Order) == order
    assert codec.decode(codec.encode([1, "x", None]), list[int | str | None]) == [1, "x", None]
    assert codec.decode(codec.encode(5), int) == 5
    assert codec.decode(codec.encode(b"\x00\x01"), bytes) == b"\x00\x01"


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.format)
def test_invalid_payload_names_the_field(codec: MsgpackCodec | JsonCodec) -> None:
    data = codec.encode({"id": str(uuid.uuid4()), "at": "2026-01-01T00:00:00Z",
                         "color": "red", "lines": [{"sku": "a", "amount": "lots"}]})
    with pytest.raises(SerializationError) as info:
        codec.decode(data, Order)
    assert info.value.reason is Reason.PAYLOAD_INVALID
    assert info.value.details["fields"] == ["lines.0.amount"]
    assert "lines.0.amount" in str(info.value)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.format)
def test_malformed_bytes_are_a_typed_error(codec: MsgpackCodec | JsonCodec) -> None:
    with pytest.raises(SerializationError) as info:
        codec.decode(b"\xc1\xff{not", Order)
    assert info.value.reason is Reason.PAYLOAD_INVALID


def test_unserializable_value_is_a_typed_error() -> None:
    with pytest.raises(SerializationError) as info:
        MsgpackCodec().encode(object())
    assert info.value.reason is Reason.PAYLOAD_UNKNOWN_TYPE


def test_codec_for() -> None:
    assert codec_for("json").format == "json"
    with pytest.raises(SerializationError):
        codec_for("xml")  # type: ignore[arg-type]
