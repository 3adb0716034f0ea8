"""covey's logs: readable under uvicorn with one call, or JSON lines with context.

covey logs through the standard :mod:`logging` module, under the ``covey``
logger (``covey.cluster``, ``covey.sharding``, …: see ``docs/logging.md``). An
application that configures logging itself gets covey's records like any other
library's. One that does not (a FastAPI app under uvicorn: uvicorn configures
only its own loggers) calls :func:`configure_logging` once, or sets
``COVEY_LOG_LEVEL`` / ``COVEY_LOG_FORMAT``, which the cluster applies when it
starts unless the application configured logging already.

Every record a covey handler writes carries the work it belongs to, read from
:func:`covey.current_context` when the record is made: tenant, request id,
trace id (the active OpenTelemetry span's, when there is one), runner and shard
(inside entity handlers, job runs, singletons and cron ticks; the runner also
on any line of a process that hosts exactly one runner).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from typing import IO, Any

from covey.core._errors import ConfigError
from covey.core._request import current_context

LOG_FORMATS = ("text", "json")
#: the text layout; the context fields follow the message when known
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(covey_context)s"
#: the extra fields a covey handler adds to every record, in the order they print
CONTEXT_FIELDS = ("tenant", "request_id", "trace_id", "span_id", "runner", "shard", "entity")

_runners: list[str] = []  # the runners this process hosts now (see note_runner)


@dataclass(frozen=True)
class LogOptions:
    """Logging set up by the cluster at start (``COVEY_LOG_LEVEL``, ``COVEY_LOG_FORMAT``).

    Both empty (the default): covey leaves logging alone. Either set: when the
    cluster starts, covey installs its handler (:func:`configure_logging`) unless
    the application configured logging already (the root logger has a handler);
    then it only sets the level of the ``covey`` logger.

    Attributes:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``; empty:
            ``INFO`` when ``format`` is set.
        format: ``text`` (one readable line per record) or ``json`` (one JSON
            object per line, with the context fields).
    """

    level: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        if self.level and _level_number(self.level) is None:
            raise ConfigError(
                f"log.level (COVEY_LOG_LEVEL) must be one of DEBUG, INFO, WARNING, ERROR, "
                f"CRITICAL, got {self.level!r}", setting="log.level")
        if self.format and self.format.lower() not in LOG_FORMATS:
            raise ConfigError(
                f"log.format (COVEY_LOG_FORMAT) must be 'text' or 'json', got {self.format!r}",
                setting="log.format")


def _level_number(level: str | int) -> int | None:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    return number if isinstance(number, int) else None


def note_runner(address: str, *, present: bool = True) -> None:
    """Record that this process hosts (``present``) or no longer hosts a runner.

    While it hosts exactly one, every covey log line carries its address.
    """
    if present:
        _runners.append(address)
    elif address in _runners:
        _runners.remove(address)


def log_context() -> dict[str, str]:
    """The context fields of the work running now (only those that are known)."""
    context = current_context()
    fields: dict[str, str | None] = {
        "tenant": context.tenant_id,
        "request_id": context.request_id,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "runner": context.cluster.runner_id or (_runners[0] if len(_runners) == 1 else None),
        "shard": context.cluster.shard_id,
        "entity": context.cluster.entity,
    }
    otel = _active_span_ids()
    if otel is not None:
        fields["trace_id"], fields["span_id"] = otel
    return {k: v for k, v in fields.items() if v}


def _active_span_ids() -> tuple[str, str] | None:
    """The trace and span id of the active OpenTelemetry span, if OpenTelemetry is in use.

    Never imports OpenTelemetry: when nothing imported it, there is no span.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class ContextFilter(logging.Filter):
    """Adds the context fields to each record (``record.covey``, ``record.covey_context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = log_context()
        record.covey = fields
        record.covey_context = (
            " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" if fields else "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the
    context fields that are known, ``exc`` (the traceback) when there is one, and
    the ``extra=`` fields given to the logging call.
    """

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
        "message", "asctime", "covey", "covey_context"}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "covey", None)
        line.update(fields if isinstance(fields, dict) else log_context())
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "covey_context"):
            record.covey_context = ""
        return super().format(record)


def configure_logging(
    level: str | int = "INFO", *, json: bool = False, stream: IO[str] | None = None,
    root: bool = False,
) -> logging.Handler:
    """Make covey's logs visible: one handler on the ``covey`` logger (or the root).

    Calling it again replaces the handler it installed before (never two).
    With ``root=False`` (the default) only covey's loggers are touched and they
    stop propagating to the root logger, so a root handler added later does not
    print covey's lines twice; ``root=True`` configures the root logger instead
    (the application's own loggers print the same way: what ``covey run`` does).

    Args:
        level: the level of the ``covey`` logger (or the root), e.g. ``"INFO"``.
        json: one JSON object per line instead of readable text.
        stream: where to write (default ``sys.stderr``).
        root: configure the root logger rather than ``covey``'s.

    Returns:
        The handler installed (to remove it, or to change its formatter).

    Raises:
        ConfigError: ``level`` is not a logging level.
    """
    number = _level_number(level)
    if number is None:
        raise ConfigError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR "
                          "or CRITICAL", setting="log.level")
    target = logging.getLogger() if root else logging.getLogger("covey")
    for old in [h for h in target.handlers if getattr(h, "covey_handler", False)]:
        target.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.covey_handler = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json else _TextFormatter(TEXT_FORMAT))
    target.addHandler(handler)
    target.setLevel(number)
    if root:
        logging.getLogger("covey").propagate = True
        logging.getLogger("covey").setLevel(logging.NOTSET)
    else:
        target.propagate = False
    return handler


def configure_from_options(options: LogOptions) -> logging.Handler | None:
    """What a starting cluster does with ``COVEY_LOG_LEVEL`` / ``COVEY_LOG_FORMAT``.

    Nothing when both are empty. When the application configured logging
    already (a handler on the root or the ``covey`` logger that covey did not
    install), only the ``covey`` logger's level is set. Else covey's handler
    is installed; returns it.
    """
    if not options.level and not options.format:
        return None
    level = options.level or "INFO"
    root_handlers = logging.getLogger().handlers
    configured = [h for h in (*root_handlers, *logging.getLogger("covey").handlers)
                  if not getattr(h, "covey_handler", False)]
    if configured:
        logging.getLogger("covey").setLevel(_level_number(level) or logging.INFO)
        return None
    # `covey run` configured the root with covey's handler: keep it there
    on_root = any(getattr(h, "covey_handler", False) for h in root_handlers)
    return configure_logging(level, json=options.format.lower() == "json", root=on_root)
