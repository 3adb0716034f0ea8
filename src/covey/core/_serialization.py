"""Serialization of pydantic models and plain values to msgpack or JSON.

A :class:`Codec` turns a value into bytes and back into a *declared* type. Values
are first reduced to JSON-compatible data by pydantic (so datetimes, enums,
UUIDs, dataclasses and models all work), then packed. Decoding validates against
the declared type; any failure is a :class:`SerializationError` whose
``details["fields"]`` names the offending fields.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Protocol, TypeVar, cast

import msgpack
import pydantic
import pydantic_core

from covey.core._errors import Reason, SerializationError

T = TypeVar("T")

Format = Literal["msgpack", "json"]


@functools.lru_cache(maxsize=1024)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def _field_paths(error: pydantic.ValidationError) -> list[str]:
    return [".".join(str(part) for part in e["loc"]) or "<root>" for e in error.errors()]


def _invalid(tp: Any, error: pydantic.ValidationError) -> SerializationError:
    fields = _field_paths(error)
    first = error.errors()[0]
    name = getattr(tp, "__name__", repr(tp))
    return SerializationError(
        f"payload does not validate as {name}: field {fields[0]!r}: {first['msg']}",
        reason=Reason.PAYLOAD_INVALID,
        fields=fields,
        type=name,
    )


def to_plain(value: Any) -> Any:
    """Reduce ``value`` to JSON-compatible data (dicts, lists, str, numbers, None)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__}: {exc}",
            reason=Reason.PAYLOAD_UNKNOWN_TYPE,
            type=type(value).__name__,
        ) from exc


def validate(data: Any, tp: type[T] | Any) -> T:
    """Validate already-decoded data as ``tp``."""
    try:
        return cast(T, _adapter(cast(Any, tp)).validate_python(data))
    except pydantic.ValidationError as exc:
        raise _invalid(tp, exc) from exc


class Codec(Protocol):
    """Encodes values to bytes and decodes bytes into declared types."""

    format: Format

    def encode(self, value: Any) -> bytes:
        """Serialize ``value``."""
        ...

    def decode(self, data: bytes, tp: type[T] | Any) -> T:
        """Deserialize ``data`` and validate it as ``tp``."""
        ...


class MsgpackCodec:
    """The default codec: compact and fast."""

    format: Format = "msgpack"

    def encode(self, value: Any) -> bytes:
        try:
            return cast(bytes, msgpack.packb(to_plain(value), use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot pack a value of type {type(value).__name__}: {exc}",
                reason=Reason.PAYLOAD_UNKNOWN_TYPE,
            ) from exc

    def decode(self, data: bytes, tp: type[T] | Any) -> T:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                ValueError, TypeError) as exc:
            raise SerializationError(
                f"malformed msgpack payload ({len(data)} bytes): {exc}",
                reason=Reason.PAYLOAD_INVALID,
                fields=[],
            ) from exc
        result: T = validate(raw, tp)
        return result


class JsonCodec:
    """A human-readable codec (UTF-8 JSON)."""

    format: Format = "json"

    def encode(self, value: Any) -> bytes:
        return pydantic_core.to_json(to_plain(value))

    def decode(self, data: bytes, tp: type[T] | Any) -> T:
        try:
            return cast(T, _adapter(cast(Any, tp)).validate_json(data))
        except pydantic.ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise SerializationError(
                    f"malformed JSON payload ({len(data)} bytes)",
                    reason=Reason.PAYLOAD_INVALID,
                    fields=[],
                ) from exc
            raise _invalid(tp, exc) from exc


def codec_for(fmt: Format) -> Codec:
    """The codec for a format name."""
    if fmt == "msgpack":
        return MsgpackCodec()
    if fmt == "json":
        return JsonCodec()
    raise SerializationError(f"unknown codec {fmt!r}", reason=Reason.PAYLOAD_UNKNOWN_TYPE)
