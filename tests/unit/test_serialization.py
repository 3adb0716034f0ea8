from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field

from covey.core import JsonCodec, MsgpackCodec, Reason, SerializationError
from covey.core.runtime import codec_for, to_plain, validate, validate_value


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


# ---- edge cases: deep nesting, lone surrogates, huge ints (issue 8) ---------


class Deposit(BaseModel):
    key: str
    amount: float = Field(ge=0, allow_inf_nan=False)
    note: Any = None


def _deep(levels: int) -> Any:
    """``levels`` of nested lists and dicts, built without recursion."""
    value: Any = "bottom"
    for level in range(levels):
        value = [value] if level % 2 else {"d": value}
    return value


def _payload_invalid(call: Callable[[], object], fields: list[str] | None = None) -> str:
    with pytest.raises(SerializationError) as info:
        call()
    error = info.value
    assert error.reason is Reason.PAYLOAD_INVALID, error
    assert not error.retryable
    if fields is not None:
        assert error.details["fields"] == fields, error
        assert all(field in str(error) for field in fields)
    str(error).encode("utf-8")  # the message can be logged: no lone surrogate in it
    return str(error)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.format)
def test_deeply_nested_payloads_are_a_typed_error(codec: MsgpackCodec | JsonCodec) -> None:
    for value in (_deep(10_000), Deposit.model_construct(key="k", amount=1.0, note=_deep(10_000))):
        _payload_invalid(lambda value=value: codec.encode(value))
        _payload_invalid(lambda value=value: to_plain(value))
    circular: list[Any] = []
    circular.append(circular)
    _payload_invalid(lambda: codec.encode(circular))
    assert codec.decode(codec.encode(_deep(100)), Any) == _deep(100)  # moderate depth is fine


def test_deeply_nested_bytes_are_a_typed_error_when_decoded() -> None:
    # beyond msgpack's own depth limit (and JSON's): refused when decoded, not a crash
    _payload_invalid(lambda: MsgpackCodec().decode(b"\x91" * 10_000 + b"\xc0", Any))
    _payload_invalid(lambda: JsonCodec().decode(b"[" * 10_000 + b"]" * 10_000, Any))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.format)
def test_lone_surrogates_are_refused_naming_the_field(codec: MsgpackCodec | JsonCodec) -> None:
    bad = "a\ud800b"
    _payload_invalid(lambda: codec.encode(Deposit.model_construct(key=bad, amount=1.0)), ["key"])
    _payload_invalid(lambda: codec.encode({"lines": [{"sku": "ok"}, {"sku": bad}]}),
                     ["lines.1.sku"])
    _payload_invalid(lambda: codec.encode({bad: 1}), ["a\\ud800b"])  # a key: shown escaped
    _payload_invalid(lambda: codec.encode(bad), ["<root>"])


def test_surrogates_in_received_bytes_are_a_typed_error() -> None:
    # "\ud800" as the UTF-8 encoder of another language may write it (CESU-8)
    _payload_invalid(lambda: MsgpackCodec().decode(b"\x81\xa3key\xa3\xed\xa0\x80", Any))
    _payload_invalid(lambda: MsgpackCodec().decode(b"\x81\xa3\xed\xa0\x80\x01", Any))
    _payload_invalid(lambda: JsonCodec().decode(b'{"key": "\\ud800"}', Any))


def test_ints_msgpack_cannot_hold_are_refused_naming_the_field() -> None:
    _payload_invalid(lambda: MsgpackCodec().encode({"amounts": [1, 2**64]}), ["amounts.1"])


def test_validation_errors_stay_small() -> None:
    """10,000 failing items do not make an error (and its reply frame) of 10,000 paths."""
    with pytest.raises(SerializationError) as info:
        validate(["x"] * 10_000, list[int])
    assert info.value.reason is Reason.PAYLOAD_INVALID
    assert info.value.details["fields"][:2] == ["0", "1"]
    assert len(info.value.details["fields"]) <= 20
    assert len(str(info.value)) < 1000


def test_validate_value_checks_instances_of_the_declared_model() -> None:
    built = Deposit.model_construct(key="k", amount=-1.0)  # skips validation
    _payload_invalid(lambda: validate_value(built, Deposit), ["amount"])
    changed = Deposit(key="k", amount=1.0)
    changed.amount = math.nan  # assignment is not validated either
    _payload_invalid(lambda: validate_value(changed, Deposit), ["amount"])
    assert validate_value(Deposit(key="k", amount=2.0), Deposit) == Deposit(key="k", amount=2.0)
    assert validate_value({"key": "k", "amount": 2}, Deposit) == Deposit(key="k", amount=2.0)
    assert validate_value(Deposit(key="k", amount=2.0), Any) == {
        "key": "k", "amount": 2.0, "note": None}  # undeclared: plain data
