"""Rendering pages and fragments: the Jinja2 environment and its filters.

Templates live in ``covey/dashboard/templates`` (shipped in the wheel) and are
autoescaped: every value an operator or an application put in the store
(job names, errors, payloads) is text, never markup.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

#: counts stop here (shown as "10,000+")
COUNT_CAP = 10_000
#: rows on one page of every list
PAGE = 50


def when(ts: float | None) -> str:
    """Unix seconds as ``2025-01-31 12:00:05Z`` (``-`` for none)."""
    if ts is None:
        return "-"
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(sep=" ", timespec="seconds")
    return stamp.replace("+00:00", "Z")


def ago(ts: float | None, now: float) -> str:
    """How long ago ``ts`` was (or how far ahead: ``in 3.0 s``)."""
    if ts is None:
        return "-"
    seconds = now - ts
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{seconds:.1f} s"
    elif seconds < 3600:
        text = f"{seconds / 60:.1f} min"
    elif seconds < 86_400:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86_400:.1f} d"
    return f"in {text}" if ahead else f"{text} ago"


def count(n: int, cap: int = COUNT_CAP) -> str:
    """``1,234``, or ``10,000+`` when a count reached its cap."""
    return f"{cap:,}+" if n >= cap else f"{n:,}"


def short(text: object, width: int = 80) -> str:
    """One line of ``text``, cut at ``width``."""
    if text is None or text == "":
        return "-"
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def plain(value: Any, width: int = 400) -> str:
    """A result or payload as compact JSON text (its repr when not JSON)."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return short(text, width)


def testid(text: object) -> str:
    """A value as it appears in a ``data-testid`` (whitespace folded to ``_``)."""
    return "_".join(str(text).split())


def environment() -> jinja2.Environment:
    """The dashboard's templates, autoescaped, with its filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("covey.dashboard", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, enable_async=False)
    env.filters.update(when=when, ago=ago, count=count, short=short, plain=plain,
                       testid=testid, quote=lambda s: quote(str(s), safe=""))
    env.globals.update(urlencode=urlencode, PAGE=PAGE)
    return env
