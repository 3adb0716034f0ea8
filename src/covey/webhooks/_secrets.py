"""Webhook signing secrets in the Standard Webhooks format: ``whsec_`` + base64.

A secret is 24 to 64 random bytes (the specification's bounds), written as
``whsec_`` followed by their standard base64. Parsing is strict: a value that
is not exactly that is refused with ``invalid_argument`` (field ``secret``)
rather than "fixed up", because a secret that silently decodes to other bytes
signs messages no receiver can verify. Error messages and ``repr`` never
contain the secret.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from covey.core.runtime import invalid_argument

PREFIX = "whsec_"
MIN_BYTES = 24
MAX_BYTES = 64


@dataclass(frozen=True, repr=False)
class WebhookSecret:
    """One HMAC-SHA256 key that signs (or verifies) webhooks.

    Attributes:
        key: the raw key, 24 to 64 bytes.

    Raises:
        ClusterError: ``invalid_argument`` (field ``secret``) when ``key`` is not
            bytes of an allowed length.
    """

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise invalid_argument("secret", "the key must be bytes")
        if not MIN_BYTES <= len(self.key) <= MAX_BYTES:
            raise invalid_argument(
                "secret", f"the key must be {MIN_BYTES} to {MAX_BYTES} bytes, "
                f"not {len(self.key)}")

    @classmethod
    def parse(cls, value: str | WebhookSecret) -> WebhookSecret:
        """Read a ``whsec_<base64>`` secret (a :class:`WebhookSecret` is returned as is).

        Missing ``=`` padding is accepted (the reference library accepts it too);
        anything else that is not standard base64 is refused.

        Args:
            value: the secret's text, as stored in configuration.

        Raises:
            ClusterError: ``invalid_argument`` (field ``secret``) for a value that is
                not a string, lacks the ``whsec_`` prefix, is not base64 or decodes
                to fewer than 24 or more than 64 bytes. The message never quotes it.
        """
        if isinstance(value, WebhookSecret):
            return value
        if not isinstance(value, str):
            raise invalid_argument(
                "secret", f"expected a 'whsec_…' string, not {type(value).__name__}")
        if not value.startswith(PREFIX):
            raise invalid_argument("secret", "a webhook secret starts with 'whsec_'")
        encoded = value[len(PREFIX):]
        try:
            # validate=True: refuse characters outside the standard alphabet (such
            # as the url-safe '-' and '_') instead of skipping them.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(
                "secret", "the part after 'whsec_' is not standard base64") from None
        return cls(key)

    def __str__(self) -> str:
        return PREFIX + base64.b64encode(self.key).decode("ascii")

    def __repr__(self) -> str:
        # Enough to tell two secrets apart in a log, never enough to use one.
        return f"WebhookSecret({PREFIX}…{str(self)[-4:]})"


def generate_secret(nbytes: int = 32) -> WebhookSecret:
    """A new random secret of ``nbytes`` bytes from :func:`secrets.token_bytes`.

    Raises:
        ClusterError: ``invalid_argument`` (field ``nbytes``) outside 24 to 64.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not (
            MIN_BYTES <= nbytes <= MAX_BYTES):
        raise invalid_argument("nbytes", f"must be an int from {MIN_BYTES} to {MAX_BYTES}")
    return WebhookSecret(secrets.token_bytes(nbytes))


def parse_secrets(value: object) -> tuple[WebhookSecret, ...]:
    """One secret or a sequence of them, parsed; at least one.

    Raises:
        ClusterError: ``invalid_argument`` (field ``secret``) for an empty sequence
            or any value :meth:`WebhookSecret.parse` refuses.
    """
    if isinstance(value, str | WebhookSecret):
        return (WebhookSecret.parse(value),)
    if isinstance(value, bytes | bytearray) or not isinstance(value, Sequence):
        raise invalid_argument(
            "secret", f"expected a secret or a list of secrets, not {type(value).__name__}")
    if not value:
        raise invalid_argument("secret", "at least one secret is needed")
    return tuple(WebhookSecret.parse(item) for item in value)
