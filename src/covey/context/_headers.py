"""Reading the request headers covey trusts: strict UTF-8, bounded, one value.

The tenant and request id become part of every message the request causes, so
they are checked at the edge, before anything is stored: a value that is not
valid UTF-8, holds a control character (NUL, CR, LF, …) or is longer than
:data:`MAX_HEADER_BYTES` is refused with a typed error, and so is a header sent
twice with two different values (which one would be the tenant?). The W3C
``traceparent`` is different: the spec says a malformed one is *ignored*, and
the request starts a new trace.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from covey.core import TRACEPARENT_HEADER, ClusterError, Reason

Scope = MutableMapping[str, Any]

MAX_HEADER_BYTES = 256
"""The longest tenant id, request id or ``traceparent`` accepted, in bytes.

Far above any real id (a UUID is 36, a ``traceparent`` 55), far below what would
bloat every stored message the request causes.
"""

# C0 controls, DEL and the C1 controls: none belongs in an identifier, and NUL,
# CR and LF are how header values smuggle things into logs and storage.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# W3C Trace Context, level 1: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _refuse(name: str, problem: str) -> ClusterError:
    # The value itself is left out of the message: it may be a megabyte of junk.
    return ClusterError(
        f"request header {name} {problem}", reason=Reason.INVALID_ARGUMENT, header=name
    )


def header(scope: Scope, name: str, *, max_bytes: int = MAX_HEADER_BYTES) -> str | None:
    """The value of request header ``name`` (case-insensitive), decoded as UTF-8.

    Args:
        scope: the ASGI scope of the request.
        name: the header name, in any case.
        max_bytes: the longest value accepted, in bytes.

    Returns:
        The value without leading and trailing spaces and tabs, or ``None`` if
        the request does not carry the header. A header sent several times with
        the same value counts once.

    Raises:
        ClusterError: reason ``invalid_argument`` and ``details["header"]`` (the
            lower-case name) if the value is longer than ``max_bytes``, is not
            valid UTF-8, contains a control character, or the header is sent
            twice with different values.
    """
    wanted = name.lower()
    key_bytes = wanted.encode()
    found: bytes | None = None
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() != key_bytes:
            continue
        raw = bytes(value)
        if found is not None and raw != found:
            raise _refuse(wanted, "was sent more than once with different values")
        found = raw
    if found is None:
        return None
    if len(found) > max_bytes:
        raise _refuse(wanted, f"is longer than {max_bytes} bytes")
    try:
        # Leading and trailing spaces and tabs are not part of a field value (RFC 9110).
        text = found.decode("utf-8").strip(" \t")
    except UnicodeDecodeError:
        raise _refuse(wanted, "is not valid UTF-8") from None
    if _CONTROL.search(text):
        raise _refuse(wanted, "contains a control character")
    return text


def trace_parent(scope: Scope) -> str | None:
    """The request's W3C ``traceparent``, or ``None`` if absent or malformed.

    A malformed value (bad hex, an all-zero id, version ``ff``, extra fields on
    version ``00``, several different values, …) is ignored, as the W3C Trace
    Context spec asks: the request then starts a new trace. A later version is
    read by its first four fields. The result is the version-``00`` form.
    """
    try:
        value = header(scope, TRACEPARENT_HEADER)
    except ClusterError:
        return None
    if value is None:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    rest = value[match.end():]
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"
