"""Standard Webhooks v1 signatures: signing what covey sends, verifying what arrives.

A message is signed over ``f"{id}.{timestamp}."`` followed by the exact body
bytes, with HMAC-SHA256 under each secret; the ``webhook-signature`` header is
the space-separated list ``v1,<base64>`` (several entries while a key rotates).
Verification follows the reference library (``standardwebhooks``): header names
are case-insensitive, the timestamp is checked first (±``tolerance`` seconds),
then every ``v1`` entry is compared in constant time with every accepted secret;
other versions (``v1a``, asymmetric) are ignored. Failures are
:class:`~covey.core.WebhookError` with ``reason`` ``webhook_signature_invalid``
or ``webhook_timestamp_invalid``; the caller's own mistakes (a body that is not
bytes, a malformed secret) are ``invalid_argument``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covey.core import Reason, SerializationError, WebhookError
from covey.core.runtime import check_seconds, invalid_argument
from covey.webhooks._secrets import WebhookSecret, parse_secrets

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
MAX_ID_BYTES = 255

# Printable ASCII without space and without ".": the signed content is joined
# with "." so neither the id nor the timestamp may contain one.
_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,255}")
# Canonical decimal seconds only: the reference library re-renders the number
# before signing, so "012" or "1e9" would verify differently on each side.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,17}")


def check_message_id(msg_id: object) -> str:
    """``msg_id`` if it can be a ``webhook-id``: 1 to 255 printable ASCII characters,
    no whitespace, no ``.``.

    Raises:
        ClusterError: ``invalid_argument`` (field ``id``) otherwise.
    """
    if not isinstance(msg_id, str) or _ID.fullmatch(msg_id) is None:
        raise invalid_argument(
            "id", f"a webhook id is 1 to {MAX_ID_BYTES} printable ASCII characters "
            "without whitespace or '.'")
    return msg_id


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _check_signing_input(timestamp: object, body: object) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise invalid_argument("timestamp", "must be a non-negative int of Unix seconds")
    if not isinstance(body, bytes):
        raise invalid_argument("body", f"must be bytes, not {type(body).__name__}")


def sign(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[WebhookSecret]) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` per secret, in the order given.

    Args:
        msg_id: the ``webhook-id`` (see :func:`check_message_id`).
        timestamp: the ``webhook-timestamp``, Unix seconds.
        body: the exact bytes that will be sent.
        secrets: one or more secrets (a rotating endpoint signs with each).

    Raises:
        ClusterError: ``invalid_argument`` for a bad id, timestamp, body or secret.
    """
    check_message_id(msg_id)
    _check_signing_input(timestamp, body)
    keys = parse_secrets(secrets)
    return " ".join(
        "v1," + base64.b64encode(_signature(s.key, msg_id, timestamp, body)).decode("ascii")
        for s in keys)


def webhook_headers(msg_id: str, timestamp: int, body: bytes,
                    secrets: Sequence[WebhookSecret]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt to send ``body``.

    Raises:
        ClusterError: ``invalid_argument`` as :func:`sign`.
    """
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(msg_id, timestamp, body, secrets)}


@dataclass(frozen=True)
class VerifiedWebhook:
    """A received webhook whose signature and timestamp checked out.

    Attributes:
        id: the ``webhook-id`` (the same on every retry: dedupe on it).
        timestamp: the ``webhook-timestamp`` of this attempt, Unix seconds.
        body: the exact bytes that were signed.
    """

    id: str
    timestamp: int
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            SerializationError: ``payload_invalid`` when the body is not JSON (or
                not UTF-8).
        """
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as exc:
            raise SerializationError(
                f"webhook {self.id}: the body is not JSON ({type(exc).__name__})",
                reason=Reason.PAYLOAD_INVALID, webhook_id=self.id) from None


def _bad_signature(problem: str) -> WebhookError:
    return WebhookError(f"webhook rejected: {problem}", reason=Reason.WEBHOOK_SIGNATURE_INVALID)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")  # raw ASGI headers; latin-1 maps every byte
    if isinstance(value, str):
        return value
    raise invalid_argument("headers", f"a header name or value is a {type(value).__name__}")


def _standard_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, str]:
    """The three Standard Webhooks headers, by lower-case name; each at most once."""
    if isinstance(headers, str | bytes):
        raise invalid_argument("headers", "expected a mapping or (name, value) pairs")
    pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    try:
        for name, value in pairs:
            key = _text(name).lower()
            if key not in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
                continue
            if key in found:
                # Which copy would a proxy have meant? Refuse rather than guess.
                raise _bad_signature(f"header {key} appears more than once")
            found[key] = _text(value)
    except (TypeError, ValueError):
        raise invalid_argument("headers", "expected a mapping or (name, value) pairs") from None
    for key in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        if not found.get(key):
            raise _bad_signature(f"header {key} is missing")
    return found


def _v1_signatures(header: str) -> list[bytes]:
    decoded = []
    for entry in header.split(" "):
        version, comma, value = entry.partition(",")
        if version != "v1" or not comma:
            continue  # another scheme (v1a) or noise: not ours to judge
        try:
            decoded.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return decoded


def verify(headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes,
           secret: str | WebhookSecret | Sequence[str | WebhookSecret], *,
           tolerance: float = 300.0, now: float | None = None) -> VerifiedWebhook:
    """Check a received webhook's headers against its raw body.

    Args:
        headers: the request headers: a mapping (a dict, Starlette's ``Headers``)
            or ``(name, value)`` pairs; names are case-insensitive.
        body: the raw request body, exactly as received (never re-serialized).
        secret: the endpoint's secret, or several while the receiver rotates it.
        tolerance: seconds the timestamp may differ from ``now`` either way.
        now: the current Unix time (default: the system clock).

    Returns:
        The verified id, timestamp and body.

    Raises:
        WebhookError: ``webhook_timestamp_invalid`` when the timestamp is not an
            integer or is more than ``tolerance`` from ``now``;
            ``webhook_signature_invalid`` when a header is missing, repeated or
            malformed, or no ``v1`` signature matches any secret.
        ClusterError: ``invalid_argument`` for a body that is not bytes, bad
            secrets, a negative tolerance or headers that are not name/value pairs.
    """
    if not isinstance(body, bytes):
        raise invalid_argument("body", f"must be bytes, not {type(body).__name__}")
    keys = parse_secrets(secret)
    tolerance = check_seconds("tolerance", tolerance)
    found = _standard_headers(headers)
    msg_id, stamp = found[ID_HEADER], found[TIMESTAMP_HEADER]
    if _ID.fullmatch(msg_id) is None:
        raise _bad_signature("the webhook-id is malformed")
    if _TIMESTAMP.fullmatch(stamp) is None:
        raise WebhookError("webhook rejected: the webhook-timestamp is not integer seconds",
                           reason=Reason.WEBHOOK_TIMESTAMP_INVALID, webhook_id=msg_id)
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookError(
            f"webhook rejected: the timestamp is {current - timestamp:+.0f} s from now, "
            f"beyond the tolerance of {tolerance:g} s",
            reason=Reason.WEBHOOK_TIMESTAMP_INVALID, webhook_id=msg_id)
    offered = _v1_signatures(found[SIGNATURE_HEADER])
    for key in keys:
        expected = _signature(key.key, msg_id, timestamp, body)
        for candidate in offered:
            if hmac.compare_digest(expected, candidate):
                return VerifiedWebhook(msg_id, timestamp, body)
    raise _bad_signature("no v1 signature matches")
