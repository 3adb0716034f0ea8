"""Envelopes: a message on its way to an entity, and how it crosses the wire.

Every message, volatile or persisted, crosses the transport in one frame, so
one size limit applies to all of them *before* anything is sent or stored:
:func:`check_size` against :func:`max_message_bytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from covey.core import (
    ClusterError,
    EntityAddress,
    MsgpackCodec,
    Reason,
    SerializationError,
    ShardId,
    TransportError,
)
from covey.sharding._wire_errors import error_fields, error_for
from covey.storage import Message, Reply

_codec = MsgpackCodec()

#: Room a frame keeps for everything of an envelope but its payload and headers:
#: ids, names and keys within their limits (``covey.core.check_text``) and the
#: framing take well under 8 KiB; the rest is headroom.
ENVELOPE_ALLOWANCE = 64 * 1024


def max_message_bytes(max_frame_bytes: int) -> int:
    """The most payload and header bytes one message may carry.

    ``max_frame_bytes`` (``COVEY_TRANSPORT_MAX_FRAME_BYTES``) minus
    :data:`ENVELOPE_ALLOWANCE` (minus half the frame for frames under 128 KiB):
    16 MiB - 64 KiB with the defaults.
    """
    return max_frame_bytes - min(ENVELOPE_ALLOWANCE, max_frame_bytes // 2)


def message_bytes(message: Message) -> int:
    """What :func:`check_size` counts: the payload plus header names and values (UTF-8)."""
    return len(message.payload) + sum(
        len(k.encode()) + len(v.encode()) for k, v in message.headers.items())


def check_size(message: Message, max_frame_bytes: int) -> None:
    """Refuse a message too big for one frame, before it is sent or stored.

    Raises:
        TransportError: reason ``frame_too_large`` (not retryable): payload and
            headers exceed :func:`max_message_bytes` of ``max_frame_bytes``;
            ``details["size"]`` and ``details["limit"]`` in bytes.
    """
    limit = max_message_bytes(max_frame_bytes)
    size = message_bytes(message)
    if size > limit:
        raise TransportError(
            f"message of {size} bytes (payload and headers) exceeds the limit of {limit} "
            f"bytes (COVEY_TRANSPORT_MAX_FRAME_BYTES less {ENVELOPE_ALLOWANCE} for the "
            "envelope); nothing was sent or stored",
            reason=Reason.FRAME_TOO_LARGE, size=size, limit=limit, field="payload",
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request to an entity; ``persisted`` ones are stored before delivery."""

    message: Message
    persisted: bool
    #: handed out by a storage read (which counted the attempt), not pushed
    read: bool = False

    @property
    def shard(self) -> ShardId:
        return self.message.address.shard

    def to_wire(self) -> dict[str, Any]:
        m = self.message
        return {
            "i": m.id, "t": m.address.entity_type, "e": m.address.entity_id,
            "g": m.address.shard.group, "s": m.address.shard.id, "n": m.tag,
            "p": m.payload, "h": dict(m.headers), "k": m.primary_key,
            "d": m.deliver_at, "r": m.priority, "P": self.persisted,
            "f": m.failures, "le": m.last_error, "st": m.starts,
        }

    @classmethod
    def from_wire(cls, body: Any) -> Envelope:
        """Rebuild an envelope; anything malformed is a ``payload_invalid`` error."""
        try:
            message = Message(
                id=_int(body["i"]),
                address=EntityAddress(
                    _str(body["t"]), _str(body["e"]), ShardId(_str(body["g"]), _int(body["s"]))
                ),
                tag=_str(body["n"]),
                payload=_bytes(body["p"]),
                headers={_str(k): _str(v) for k, v in dict(body["h"]).items()},
                primary_key=None if body["k"] is None else _str(body["k"]),
                deliver_at=None if body["d"] is None else _time(body["d"]),
                priority=_int(body["r"]),
                failures=_int(body.get("f", 0)),
                starts=_int(body.get("st", 0)),
                last_error=None if body.get("le") is None else _str(body["le"]),
            )
            return cls(message, bool(body["P"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SerializationError(f"malformed envelope: {exc!r}",
                                     reason=Reason.PAYLOAD_INVALID) from exc


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _time(value: Any) -> float:
    seconds = float(value)
    if not math.isfinite(seconds):  # a timer set for it would never sleep
        raise ValueError(f"deliver_at is not a finite time: {value!r}")
    return seconds


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Reschedule:
    """A deliverer's answer: this attempt failed, run the same message again later."""

    deliver_at: float
    error: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """A deliverer's answer: not now, and nothing to store; the message stays stored
    and the deliverer reads it back itself (its in-memory queue for it is full)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """A deliverer's answer: the message is completed already, with ``reply``.

    For deliverers that complete their messages themselves, fenced, with units
    of work of their own (event deliveries retried in place): the messenger
    stores nothing more and answers ``reply``.
    """

    reply: Reply


# ---- error replies -------------------------------------------------------

def error_payload(exc: BaseException) -> bytes:
    """Encode an exception as an error reply's payload (see :mod:`._wire_errors`).

    Its details also name the exception's type and message, for the caller's error.
    """
    reason, message, details = error_fields(exc)
    details.setdefault("error_type", type(exc).__name__)
    details.setdefault("message", message)
    return _codec.encode({"reason": reason, "message": message, "details": details})


def raise_error_reply(reply: Reply, context: str) -> None:
    """Raise the typed error an error reply describes."""
    try:
        data: dict[str, Any] = _codec.decode(reply.payload, dict[str, Any])
        reason = Reason(data.get("reason", Reason.HANDLER_FAILED.value))
        details = dict(data.get("details") or {})
        message = str(data.get("message", ""))
    except (ClusterError, ValueError, TypeError):
        reason, details, message = Reason.HANDLER_FAILED, {}, "undecodable error reply"
    raise error_for(reason, f"{context}: {details.get('error_type', reason.value)}: {message}",
                    details)
