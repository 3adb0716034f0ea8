"""Serialization of pydantic models and plain values to msgpack or JSON.

A :class:`Codec` turns a value into bytes and back into a *declared* type. Values
are first reduced to JSON-compatible data by pydantic (so datetimes, enums,
UUIDs, dataclasses and models all work), then packed. Decoding validates against
the declared type; any failure is a :class:`SerializationError` whose
``details["fields"]`` names the offending fields.

Values no codec can carry are refused with ``payload_invalid`` on the way out
and on the way in: nesting deeper than pydantic serializes (about 250 levels)
or msgpack and JSON parse, circular references, strings with a lone surrogate
(not encodable as UTF-8; ``details["fields"]`` gives its path) and, in msgpack,
ints outside the 64-bit range. ``payload_unknown_type`` is kept for values of
a type that has no plain form at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


#: the most field paths an error lists, and the longest path it shows (characters):
#: a failure deep in a recursive model must not make an error of many kilobytes
MAX_ERROR_FIELDS = 20
MAX_FIELD_PATH = 200


def _path(parts: tuple[Any, ...] | list[Any]) -> str:
    """A dotted field path, printable (a lone surrogate shown escaped) and bounded."""
    text = ".".join(str(part) for part in parts) or "<root>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_FIELD_PATH else "..." + text[-MAX_FIELD_PATH:]


def _field_paths(error: pydantic.ValidationError) -> list[str]:
    return [_path(e["loc"]) for e in error.errors()[:MAX_ERROR_FIELDS]]


def _find(data: Any, bad: Callable[[Any], bool]) -> str | None:
    """The path of the first value or dict key in ``data`` that is ``bad``.

    ``data`` is plain data or a value still holding models. Iterative: the data
    may be nested as deep as msgpack allows.
    """
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, pydantic.BaseModel):
            value = dict(value)
        if isinstance(value, dict):
            for key in value:
                if bad(key):
                    return _path((*path, key))
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list | tuple):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))
        elif bad(value):
            return _path(path)
    return None


def _not_utf8(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_int64(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and not -(2**63) <= value < 2**64)


def _unencodable(value: Any, plain: Any, exc: Exception) -> SerializationError:
    """The typed error for plain data a codec could not encode."""
    name = type(value).__name__
    where = _find(plain, _not_utf8)
    if where is not None:
        return SerializationError(
            f"cannot encode a value of type {name}: field '{where}' is not valid Unicode "
            "(a lone surrogate)", reason=Reason.PAYLOAD_INVALID, fields=[where], type=name)
    where = _find(plain, _not_int64)
    if where is not None:
        return SerializationError(
            f"cannot encode a value of type {name}: field '{where}' is an int outside "
            "-2**63..2**64-1", reason=Reason.PAYLOAD_INVALID, fields=[where], type=name)
    return SerializationError(f"cannot encode a value of type {name}: {exc}",
                              reason=Reason.PAYLOAD_INVALID, fields=[], type=name)


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
    """Reduce ``value`` to JSON-compatible data (dicts, lists, str, numbers, None).

    Raises:
        SerializationError: ``payload_unknown_type`` for a value of a type with
            no plain form; ``payload_invalid`` for nesting too deep or circular.
    """
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__}: {exc}",
            reason=Reason.PAYLOAD_UNKNOWN_TYPE,
            type=type(value).__name__,
        ) from exc
    except UnicodeEncodeError as exc:  # a dict key with a lone surrogate
        raise _unencodable(value, value, exc) from None
    except (ValueError, RecursionError) as exc:
        # pydantic raises a bare ValueError for "Maximum serialization depth
        # exceeded" and "Circular reference detected"
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__}: {exc} (nested "
            "too deeply, or circular)",
            reason=Reason.PAYLOAD_INVALID,
            fields=[],
            type=type(value).__name__,
        ) from None  # the chained error adds nothing but length


def validate(data: Any, tp: type[T] | Any) -> T:
    """Validate already-decoded data as ``tp``."""
    try:
        return cast(T, _adapter(cast(Any, tp)).validate_python(data))
    except pydantic.ValidationError as exc:
        raise _invalid(tp, exc) from exc


def validate_value(value: Any, tp: type[T] | Any) -> T:
    """``value`` as ``tp``: reduced to plain data, then validated.

    Also when ``value`` already is an instance of ``tp``: one built with
    ``model_construct()`` or changed after it was made (pydantic does not
    validate assignment by default) may hold what the model forbids. For
    ``tp`` ``Any`` the plain data is returned.

    Raises:
        SerializationError: ``payload_invalid`` naming the fields that do not
            validate, or what :func:`to_plain` raises.
    """
    plain = to_plain(value)
    if tp is Any:
        return cast(T, plain)
    result: T = validate(plain, tp)
    return result


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
        plain = to_plain(value)
        try:
            return cast(bytes, msgpack.packb(plain, use_bin_type=True))
        except TypeError as exc:
            raise SerializationError(
                f"cannot pack a value of type {type(value).__name__}: {exc}",
                reason=Reason.PAYLOAD_UNKNOWN_TYPE,
            ) from exc
        except (ValueError, OverflowError) as exc:  # surrogates, big ints, depth
            raise _unencodable(value, plain, exc) from None

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
        plain = to_plain(value)
        try:
            return pydantic_core.to_json(plain)
        except ValueError as exc:  # PydanticSerializationError: a lone surrogate
            raise _unencodable(value, plain, exc) from None

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
