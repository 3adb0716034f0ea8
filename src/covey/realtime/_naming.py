"""Stream names and user ids, and the tenant-scoped keys they are stored under.

A stream's name is what applications and clients use (``"orders"``,
``"user:42"``); its *key* in the store is ``<tenant>\\x1f<name>`` (tenant empty
when there is none), so two tenants' ``"orders"`` are two streams and a client
never receives another tenant's items. User ids are scoped the same way.
"""

from __future__ import annotations

import re

from covey.core import RealtimeError, Reason

#: a stream name: 1..200 characters of [A-Za-z0-9._:@-]
STREAM_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
#: the largest user id (UTF-8 bytes)
MAX_USER_BYTES = 200
#: the largest tenant id (UTF-8 bytes)
MAX_TENANT_BYTES = 90
_SEPARATOR = "\x1f"


def check_stream(name: object) -> str:
    """``name`` if it is a valid stream name.

    Raises:
        RealtimeError: ``invalid_argument`` (``details["field"] == "stream"``).
    """
    if not isinstance(name, str) or STREAM_NAME.fullmatch(name) is None:
        raise RealtimeError(f"invalid stream name {str(name)[:80]!r}: 1 to 200 characters of "
                            "letters, digits and . _ : @ -", reason=Reason.INVALID_ARGUMENT,
                            field="stream")
    return name


def check_user(user: object) -> str:
    """``user`` if it is a valid user id (a non-empty string, no control characters).

    Raises:
        RealtimeError: ``invalid_argument`` (``details["field"] == "user"``).
    """
    if not isinstance(user, str) or not user or len(user.encode()) > MAX_USER_BYTES \
            or any(ord(c) < 32 for c in user):
        raise RealtimeError(f"invalid user id {str(user)[:80]!r}: 1 to {MAX_USER_BYTES} bytes, "
                            "no control characters", reason=Reason.INVALID_ARGUMENT,
                            field="user")
    return user


def scoped(tenant: str | None, name: str) -> str:
    """The store key of ``name`` (a stream name or user id) in ``tenant``."""
    tenant = tenant or ""
    if len(tenant.encode()) > MAX_TENANT_BYTES or _SEPARATOR in tenant or "\x00" in tenant:
        raise RealtimeError(f"invalid tenant id {tenant[:80]!r}", reason=Reason.INVALID_ARGUMENT,
                            field="tenant")
    return f"{tenant}{_SEPARATOR}{name}"


def unscoped(key: str) -> tuple[str | None, str]:
    """``(tenant, name)`` of a store key (tenant ``None`` when there is none)."""
    tenant, _, name = key.partition(_SEPARATOR)
    return tenant or None, name
