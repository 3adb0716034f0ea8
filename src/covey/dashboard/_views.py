"""The dashboard's views: what each page loads, and the checks of what it is asked.

A :class:`View` loads its data (bounded reads only: a page of at most
:data:`~covey.dashboard._render.PAGE` rows, counts capped) into a dict its
template renders; the same load feeds the page and its live fragment. Loading
raises ``ClusterError`` for what it cannot show (an unknown job, a bad filter):
the app turns it into a 404 or 400 page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from covey.core import ClusterError, Reason
from covey.dashboard._source import DashboardSource

Params = Mapping[str, str]
Load = Callable[[DashboardSource, Params, float], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class View:
    """One page of the dashboard.

    Attributes:
        name: its template (``views/<name>.html``) and its live event's name.
        nav: the navigation entry it belongs to.
        load: ``load(source, params, now)``: the template's data (``title`` among it).
        forms: a template of forms shown below the live part (not swapped live).
    """

    name: str
    nav: str
    load: Load
    forms: str | None = None


#: the navigation bar: (view, label)
NAV = (("runners", "Runners"), ("shards", "Shards"), ("entities", "Entities"),
       ("jobs", "Jobs"), ("workflows", "Workflows"), ("events", "Events"),
       ("webhooks", "Webhooks"), ("schedules", "Schedules"), ("health", "Health"))


def not_found(what: str, name: object) -> ClusterError:
    """A page for something that does not exist (the app answers 404)."""
    return ClusterError(f"no {what} {name!r}", reason=Reason.INVALID_ARGUMENT,
                        field=what, not_found=what)


def bad(field: str, message: str) -> ClusterError:
    """A filter or field the dashboard cannot take (the app answers 400)."""
    return ClusterError(message, reason=Reason.INVALID_ARGUMENT, field=field)


def choice(params: Params, field: str, allowed: tuple[str, ...]) -> str | None:
    """``params[field]`` if set: one of ``allowed``."""
    value = params.get(field) or None
    if value is not None and value not in allowed:
        raise bad(field, f"{field} must be one of {', '.join(allowed)} (not {value!r})")
    return value


def text(params: Params, field: str, limit: int = 200) -> str | None:
    """``params[field]`` if set: at most ``limit`` characters."""
    value = params.get(field) or None
    if value is not None and len(value) > limit:
        raise bad(field, f"{field} is longer than {limit} characters")
    return value


def positive(params: Params, field: str) -> int | None:
    """``params[field]`` if set: a positive 64-bit integer (an id)."""
    value = params.get(field) or None
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or not 0 < int(value) < 2**63:
        raise bad(field, f"{field} must be a positive integer id (not {value[:40]!r})")
    return int(value)
