"""``covey.Event``: a typed domain event, its topic, version and partition key.

::

    class OrderPlaced(covey.Event, topic="orders", version=1, key="order_id"):
        order_id: str
        total: int

The class options are checked when the class is created (a typed
``invalid_argument`` naming the option); the stored form of an event is its
plain data (msgpack), tagged with the class's name and version in the headers of
its deliveries. Older stored versions are brought forward by the upcasters
registered with ``@covey.upcaster(OrderPlaced, from_version=1)`` (the same
chains as entity state).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import pydantic

from covey.core import ClusterError, MsgpackCodec, Reason, SerializationError
from covey.core.runtime import (
    check_text,
    invalid_argument,
    state_version,
    upcast,
    validate,
    validate_value,
)

#: topics and group names: what every backend stores as a plain name
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
#: the longest topic, group or event type name (UTF-8 bytes)
MAX_EVENT_NAME_BYTES = 200

KeyOption = str | Callable[[Any], Any] | None

_codec = MsgpackCodec()


def check_name(field: str, value: object) -> str:
    """A topic or group name: ``[A-Za-z0-9._-]+``, at most 200 bytes.

    Raises:
        ClusterError: ``invalid_argument`` naming ``field``.
    """
    text = check_text(field, value, max_bytes=MAX_EVENT_NAME_BYTES)
    if not NAME_PATTERN.fullmatch(text):
        raise invalid_argument(field, f"{text!r} may only hold letters, digits, '.', '_', '-'")
    return text


class Event(pydantic.BaseModel):
    """Base class of domain events (a pydantic model).

    Class options (keywords of the class statement):

    - ``topic``: where it is published (``[A-Za-z0-9._-]``, <= 200 bytes);
      required to publish or subscribe; inherited by subclasses.
    - ``version``: the version of its stored form (int >= 1, default 1); a
      subscriber reads older stored versions through the class's upcasters.
    - ``key``: the partition key: a field name, or a function of the event
      giving its key. Events with one key are handled in publish order by each
      subscriber group; without a key an event's id is its key (no ordering).
      ``publish(event, key=...)`` overrides it.
    - ``name``: the type name stored with each event (default: the class name).
    """

    __covey_topic__: ClassVar[str] = ""
    __covey_event_type__: ClassVar[str] = ""
    __covey_key__: ClassVar[KeyOption] = None
    covey_version: ClassVar[int] = 1

    def __init_subclass__(cls, **options: Any) -> None:
        # the options are read by __pydantic_init_subclass__, once the fields exist
        super().__init_subclass__()

    @classmethod
    def __pydantic_init_subclass__(cls, *, topic: str | None = None, version: int | None = None,
                                   key: KeyOption = None, name: str | None = None,
                                   **unknown: Any) -> None:
        super().__pydantic_init_subclass__()
        if unknown:
            raise invalid_argument(sorted(unknown)[0], f"{cls.__name__}: not an Event option "
                                   "(topic, version, key, name)")
        if topic is not None:
            cls.__covey_topic__ = check_name("topic", topic)
        cls.__covey_event_type__ = check_text(
            "name", cls.__name__ if name is None else name, max_bytes=MAX_EVENT_NAME_BYTES)
        if version is None:
            version = 1
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise invalid_argument("version", f"{cls.__name__}: {version!r} is not an int >= 1")
        cls.covey_version = version
        if key is not None:
            if isinstance(key, str):
                if key not in cls.model_fields:
                    raise invalid_argument("key", f"{cls.__name__} has no field {key!r}")
            elif not callable(key):
                raise invalid_argument("key", f"{key!r} is not a field name or a function")
            cls.__covey_key__ = key


def event_topic(cls: type[Event]) -> str:
    """The topic of an event class; refused when it has none."""
    if not cls.__covey_topic__:
        raise invalid_argument("topic", f"{cls.__name__} declares no topic "
                               "(class X(covey.Event, topic=...))")
    return cls.__covey_topic__


def check_event_class(value: object) -> type[Event]:
    """A concrete event class (a subclass of Event with a topic)."""
    if not (isinstance(value, type) and issubclass(value, Event)) or value is Event:
        raise invalid_argument("event", f"{value!r} is not a covey.Event subclass")
    event_topic(value)
    return value


def event_key(event: Event, key: object, event_id: int) -> str:
    """The partition key of one published event: ``key`` if given, else the class's."""
    if key is None:
        option = type(event).__covey_key__
        if option is None:
            return str(event_id)
        key = getattr(event, option) if isinstance(option, str) else option(event)
    if key is None:
        raise invalid_argument("key", f"the key of this {type(event).__name__} is None")
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise invalid_argument("key", f"{key!r} is not a str or an int")
    return check_text("key", str(key), max_bytes=1024)


def encode_event(event: object) -> tuple[type[Event], bytes]:
    """A published event checked and encoded.

    Raises:
        ClusterError: ``invalid_argument``: not an Event, no topic, or a value that
            does not validate (``details["field"]`` names the field).
    """
    if not isinstance(event, Event):
        raise invalid_argument("event", f"{type(event).__name__} is not a covey.Event")
    cls = type(event)
    event_topic(cls)
    try:
        # validated again: built with model_construct(), or changed since it was made
        return cls, _codec.encode(validate_value(event, cls))
    except SerializationError as exc:
        fields = exc.details.get("fields") or ["event"]
        raise invalid_argument(str(fields[0]), str(exc), fields=fields) from exc
    except ClusterError as exc:  # a value with no plain form
        raise invalid_argument("event", str(exc)) from exc


class EventVersionUnknown(ClusterError):
    """A stored event is newer than the subscriber's class (deploy the newer code)."""

    default_reason = Reason.STATE_VERSION_UNKNOWN


def decode_event(cls: type[Event], payload: bytes, version: int) -> Event:
    """A stored event as ``cls``, upcast from ``version``.

    Raises:
        EventVersionUnknown: ``version`` is newer than ``cls``'s (``details``:
            ``stored_version``, ``known_version``).
        SerializationError: ``payload_invalid`` (the field named) for data that
            does not validate, or an upcaster that failed.
    """
    known = state_version(cls)
    if version > known:
        raise EventVersionUnknown(
            f"stored {cls.__covey_event_type__} is version {version}; this code knows "
            f"versions up to {known}", type=cls.__covey_event_type__,
            stored_version=version, known_version=known)
    data: Any = _codec.decode(payload, Any)
    return validate(upcast(cls, data, version), cls)
