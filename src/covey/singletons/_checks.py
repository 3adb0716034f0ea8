"""Checks shared by cron and singleton declarations.

A declaration is refused when it is made, with ``invalid_argument`` naming the
option in ``details["field"]``: a bad value accepted there would only show up
at start (a name no shard can be computed for stops the whole cluster) or
never (a NaN interval is never reached).
"""

from __future__ import annotations

from covey.core import MAX_NAME_BYTES
from covey.core.runtime import check_seconds, check_text, invalid_argument

invalid = invalid_argument  # this package's name for it
__all__ = ["check_name", "check_seconds", "invalid"]


def check_name(name: object) -> str:
    """A cron or singleton name: a non-empty ``str`` of at most ``MAX_NAME_BYTES``
    UTF-8 bytes, without NUL or lone surrogates (it is stored as text)."""
    return check_text("name", name, max_bytes=MAX_NAME_BYTES)


