"""Checks shared by cron and singleton declarations.

A declaration is refused when it is made, with ``invalid_argument`` naming the
option in ``details["field"]``: a bad value accepted there would only show up
at start (a name no shard can be computed for stops the whole cluster) or
never (a NaN interval is never reached).
"""

from __future__ import annotations

import datetime as dt
import math

from covey.core import MAX_NAME_BYTES, ClusterError, Reason, check_text


def invalid(field: str, problem: str) -> ClusterError:
    """A caller mistake in option ``field`` (non-retryable, ``details["field"]``)."""
    return ClusterError(f"invalid {field}: {problem}", reason=Reason.INVALID_ARGUMENT,
                        field=field)


def check_name(name: object) -> str:
    """A cron or singleton name: a non-empty ``str`` of at most ``MAX_NAME_BYTES``
    UTF-8 bytes, without NUL or lone surrogates (it is stored as text)."""
    return check_text("name", name, max_bytes=MAX_NAME_BYTES)


def check_seconds(field: str, value: object, *, infinite: bool) -> float:
    """``value`` (an int, a float or a ``timedelta``) as a number of seconds > 0.

    Args:
        field: the option's name, for the error.
        value: the value to check.
        infinite: whether ``inf`` is allowed (it means "never").

    Raises:
        ClusterError: ``invalid_argument`` for NaN, zero or negative values, a
            bool, a string or any other type, and for ``inf`` unless allowed.
    """
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field, f"{value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        raise invalid(field, f"{value!r} is too large") from None
    if math.isinf(seconds) and seconds > 0:
        if infinite:
            return seconds
        raise invalid(field, "must be finite")
    if not seconds > 0:  # NaN fails this too
        raise invalid(field, f"{value!r} is not a number of seconds > 0")
    return seconds
