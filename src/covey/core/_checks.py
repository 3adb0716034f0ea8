"""Argument checks shared by every layer: one wording, one ``details`` vocabulary.

A caller mistake is a non-retryable :class:`ClusterError` with reason
``invalid_argument`` and ``details["field"]`` naming the argument or option.
"""

from __future__ import annotations

import datetime as dt
import math

from covey.core._errors import ClusterError, Reason


def invalid_argument(field: str, problem: str, **details: object) -> ClusterError:
    """A caller mistake in ``field`` (non-retryable, ``details["field"]``)."""
    return ClusterError(f"invalid {field}: {problem}", reason=Reason.INVALID_ARGUMENT,
                        field=field, **details)


def check_seconds(field: str, value: object, *, positive: bool = False,
                  infinite: bool = False) -> float:
    """``value`` (an int, a float or a ``timedelta``) as a number of seconds.

    Args:
        field: the argument's name, for the error.
        value: the value to check.
        positive: refuse zero as well as negatives.
        infinite: allow ``inf`` (it then means "never").

    Raises:
        ClusterError: ``invalid_argument`` for NaN, negatives (and zero when
            ``positive``), ``inf`` unless allowed, a bool, a string or any other type.
    """
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_argument(field, f"{value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        raise invalid_argument(field, f"{value!r} is too large") from None
    if math.isinf(seconds) and seconds > 0:
        if infinite:
            return seconds
        raise invalid_argument(field, "must be finite")
    if not (seconds > 0 if positive else seconds >= 0):  # NaN fails both
        bound = "> 0" if positive else ">= 0"
        raise invalid_argument(field, f"{value!r} is not a number of seconds {bound}")
    return seconds
