"""OpenTelemetry spans and W3C trace-context propagation, optional and near free.

covey emits spans only when ``opentelemetry-api`` is importable (``pip install
covey[otel]``) *and* the application configured a tracer provider (an SDK, or
anything that is not the API's default no-op/proxy provider). Otherwise every
helper here returns at once: a module-level flag remembers a failed import, and
a configured provider is looked up with one global read per span.

The helpers are what every capability that moves work between pods uses:

- :func:`inject_trace` writes the current span's W3C context (``traceparent``,
  ``tracestate``) into a carrier, e.g. the headers of a message that is about
  to be sent or stored (W3C Trace Context is covey's wire format between its
  pods, whatever ``OTEL_PROPAGATORS`` says);
- :func:`extract_trace` reads it back on the other side;
- :func:`producer_span` opens the sending side's span (``PRODUCER`` for stored
  work, ``CLIENT`` for a call the caller awaits) and injects *its* context into
  the carrier;
- :func:`consumer_span` opens the receiving side's span: a child of the
  carrier's context for synchronous work (``link=False``), or a new trace with a
  span *link* to it for stored, delayed or retried work (``link=True``), as the
  OpenTelemetry messaging conventions ask;
- :func:`internal_span` for work without a carrier (cron runs, singleton starts);
- :func:`traced_context` copies the current span's ids into a
  :class:`~covey.core.RequestContext`, so logs and the ``traceparent`` covey
  sends without OpenTelemetry name the same span.

Spans are yielded as a :class:`SpanHandle`; when tracing is off it is a shared
object whose methods do nothing. The span helpers start their span when they
are called: use them only as ``with helper(...) as span:``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Literal

from covey.core._ids import MAX_HEADER_VALUE_BYTES
from covey.core._request import TRACEPARENT_HEADER, RequestContext

try:  # the whole of OpenTelemetry is optional: covey[otel]
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised in an environment without it
    _OTEL = False
else:
    _OTEL = True
    #: an empty context: a span started in it is the root of a new trace
    _ROOT = _otel_context.Context()
    _KINDS: dict[str, Any] = {k.name.lower(): k for k in _trace.SpanKind}
    #: the two flags every covey pod sends, made once
    _FLAGS = {"00": _trace.TraceFlags(0), "01": _trace.TraceFlags(_trace.TraceFlags.SAMPLED)}
    # what every span does, bound once: these run twice per traced call
    _attach = _otel_context.attach
    _detach = _otel_context.detach
    _in_context = _trace.set_span_in_context
    _current_span = _trace.get_current_span
    _Link = _trace.Link
    _SpanContext = _trace.SpanContext

TRACESTATE_HEADER = "tracestate"

SpanKindName = Literal["producer", "consumer", "client", "server", "internal"]
AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue | None]
LazyAttributes = Attributes | Callable[[], Attributes] | None

INSTRUMENTATION_NAME = "covey"
"""The instrumentation scope of covey's spans (``otel.scope.name``)."""

#: ``traceparent`` (version, trace id, parent id, flags), lower-case hex only; a
#: later version may add fields after a ``-`` (W3C Trace Context, "versioning")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

DETAILS_ENV = "COVEY_TRACE_DETAILS"
"""``0`` (``false``, ``no``, ``off``): covey's entity spans leave out their detailed
attributes (entity id, RPC, shard, runner), which makes each span cheaper."""

_details = os.environ.get(DETAILS_ENV, "").strip().lower() not in {"0", "false", "no", "off"}

_override: Any = None  # a provider set with use_tracer_provider, else the global one
_cached: tuple[Any, Any] | None = None  # (provider, tracer)
#: when to look at the global provider again: OpenTelemetry's lookup reads
#: os.environ on every call until one is set, too slow for every message
_recheck_at = 0.0
#: seconds a global provider set (or replaced) later may take to be used
PROVIDER_RECHECK_S = 1.0


class SpanHandle:
    """The span a helper opened (or nothing, when tracing is off).

    Attributes:
        recording: ``True`` when a real span records what is set on it.
    """

    __slots__ = ("_span", "recording", "status_code")

    def __init__(self, span: Any = None) -> None:
        self._span = span
        self.recording = span is not None and bool(span.is_recording())
        self.status_code: int | None = None

    def set_attribute(self, key: str, value: AttributeValue | None) -> None:
        """Set one attribute (``None`` is skipped)."""
        if self.recording and value is not None:
            self._span.set_attribute(key, value)

    def set_status_code(self, status: int) -> None:
        """The HTTP status of the response (:func:`http_span`)."""
        if self.recording:
            self.status_code = status
            self._span.set_attribute("http.response.status_code", status)

    def update_name(self, name: str) -> None:
        if self.recording:
            self._span.update_name(name)

    def fail(self, description: str, error: BaseException | None = None) -> None:
        """Mark the span failed (status ``ERROR``), recording ``error`` if given.

        For failures that do not propagate as exceptions (an error reply, a job
        attempt that will be retried).
        """
        if not self.recording:
            return
        if error is not None:
            self._span.record_exception(error)
        self._span.set_status(_trace.Status(_trace.StatusCode.ERROR, description))


_NO_SPAN = SpanHandle()
SpanScope = contextlib.AbstractContextManager[SpanHandle]


def use_tracer_provider(provider: Any) -> None:
    """Make covey's spans go to ``provider`` instead of the global one.

    ``None`` goes back to the global provider (``trace.set_tracer_provider``);
    a ``NoOpTracerProvider`` turns covey's spans off while the application keeps
    its own. Safe to call from any thread at any time.
    """
    global _override, _recheck_at
    _override = provider
    _recheck_at = 0.0


def _tracer() -> Any:
    """covey's tracer, or ``None`` when no tracer provider is configured."""
    global _cached, _recheck_at
    if not _OTEL:
        return None
    if _override is None and _cached is not None:
        now = time.monotonic()
        if now < _recheck_at:
            return _cached[1]
        _recheck_at = now + PROVIDER_RECHECK_S
    provider = _override if _override is not None else _trace.get_tracer_provider()
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        tracer = None  # the API alone: spans would be no-ops anyway
    else:
        tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    _cached = (provider, tracer)
    return tracer


def tracing_enabled() -> bool:
    """``True`` when covey emits spans: OpenTelemetry is installed and configured."""
    return _tracer() is not None


def use_trace_details(enabled: bool) -> None:
    """Add (or stop adding) covey's detailed span attributes; ``COVEY_TRACE_DETAILS=0``
    turns them off at start-up. On by default; every attribute costs the SDK work on
    every span (docs/tracing.md, "What it costs")."""
    global _details
    _details = enabled


def inject_trace(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current span's W3C trace context into ``carrier`` and return it.

    Sets ``traceparent`` (replacing any the carrier had) and ``tracestate`` when
    the span has one. Without tracing, or outside any span, ``carrier`` is left
    as it is (covey's own ``traceparent`` from the request context still travels).

    covey's messages always carry W3C Trace Context, whatever
    ``OTEL_PROPAGATORS`` says: it is covey's wire format between its own pods.
    For carriers that leave covey (an outgoing HTTP call), use
    ``opentelemetry.propagate.inject``.
    """
    if _tracer() is None:
        return carrier
    span_context = _current_span().get_span_context()
    if span_context.is_valid:
        _inject(span_context, carrier)
    return carrier


def _inject(span_context: Any, carrier: MutableMapping[str, str]) -> None:
    # formatted here, not by the global propagator: W3C is covey's wire format,
    # and this runs on every traced message
    carrier[TRACEPARENT_HEADER] = (f"00-{span_context.trace_id:032x}-"
                                   f"{span_context.span_id:016x}-{span_context.trace_flags:02x}")
    state = span_context.trace_state
    if state:
        header = state.to_header()
        if len(header.encode()) <= MAX_HEADER_VALUE_BYTES:  # bounded, like every header
            carrier[TRACESTATE_HEADER] = header


def extract_trace(carrier: Mapping[str, str]) -> Any:
    """The OpenTelemetry ``Context`` whose span is the one ``carrier`` names.

    ``None`` without tracing, or when the carrier has no valid W3C
    ``traceparent`` (a malformed one is ignored, as the spec asks).
    """
    remote = _remote(carrier) if _tracer() is not None else None
    if remote is None:
        return None
    return _in_context(_trace.NonRecordingSpan(remote))


def _remote(carrier: Mapping[str, str]) -> Any:
    """The remote ``SpanContext`` of the carrier's ``traceparent``, or ``None``."""
    value = carrier.get(TRACEPARENT_HEADER)
    if not value:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags = match.groups()
    if (version == "ff" or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN
            # version 00 has exactly these fields; a later one may add more after a "-"
            or (len(value) != 55 and (version == "00" or value[55] != "-"))):
        return None
    trace_flags = _FLAGS.get(flags)
    if trace_flags is None:
        trace_flags = _trace.TraceFlags(int(flags, 16))
    state = carrier.get(TRACESTATE_HEADER)
    return _SpanContext(int(trace_hex, 16), int(span_hex, 16), True, trace_flags,
                        _trace.TraceState.from_header([state]) if state else None)


def _attributes(attributes: LazyAttributes, details: LazyAttributes = None) -> Attributes | None:
    """The span's attributes (and ``details`` when they are on) without ``None`` values."""
    values = attributes() if callable(attributes) else attributes
    if details is not None and _details:
        extra = details() if callable(details) else details
        values = {**values, **extra} if values else extra
    if values is None:
        return None
    if type(values) is dict and None not in values.values():
        return values  # clean already (the SDK copies what it keeps)
    return {k: v for k, v in values.items() if v is not None}


class _Scope(SpanHandle):
    """A started span, current (attached) until the ``with`` ends.

    A class rather than a generator context manager, with the span started by
    the caller: it runs on every traced message, twice per call.
    """

    __slots__ = ("_token",)

    def __init__(self, span: Any) -> None:
        self._span = span
        self.recording = span.is_recording()
        self.status_code = None
        self._token = _attach(_in_context(span))

    def __enter__(self) -> SpanHandle:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        span = self._span
        if error is not None and isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR,
                                          f"{type(error).__name__}: {error}"))
        _detach(self._token)
        span.end()


_OFF: SpanScope = contextlib.nullcontext(_NO_SPAN)  # stateless: one for every untraced span


def producer_span(name: str, carrier: MutableMapping[str, str], *,
                  kind: SpanKindName = "producer", attributes: LazyAttributes = None,
                  details: LazyAttributes = None) -> SpanScope:
    """A span for sending work, current inside the ``with``; its context goes into ``carrier``.

    Args:
        name: the span name, e.g. ``send Account.deposit``.
        carrier: the headers the work travels with; gets ``traceparent``.
        kind: ``producer`` for stored work, ``client`` for a call that is awaited.
        attributes: a mapping, or a callable that makes one (only called when
            tracing is on); ``None`` values are left out.
        details: more attributes, like ``attributes``, added only when covey's
            detailed attributes are on (the default; ``COVEY_TRACE_DETAILS=0``
            leaves them out).

    An exception leaving the block marks the span failed and is re-raised.
    """
    tracer = _tracer()
    if tracer is None:
        return _OFF
    span = tracer.start_span(name, kind=_KINDS[kind],
                             attributes=_attributes(attributes, details))
    _inject(span.get_span_context(), carrier)
    return _Scope(span)


def consumer_span(name: str, carrier: Mapping[str, str], *, link: bool,
                  kind: SpanKindName = "consumer", attributes: LazyAttributes = None,
                  details: LazyAttributes = None) -> SpanScope:
    """A span for work that arrived with ``carrier``, current inside the ``with``.

    Args:
        name: the span name, e.g. ``process Account.deposit``.
        carrier: the headers the work arrived with.
        link: ``False``: the span is a child of the carrier's span (synchronous
            work: a volatile call, an HTTP request). ``True``: the span starts
            a new trace and *links* to the carrier's span (stored or delayed
            work: persisted messages, job runs, cron ticks; each attempt is a
            span of its own).
        kind: ``consumer`` (stored work) or ``server`` (synchronous).
        attributes, details: as for :func:`producer_span`.
    """
    tracer = _tracer()
    if tracer is None:
        return _OFF
    remote = _remote(carrier)
    if link:
        # a root span (its own trace), linked to the creator: no remote Context needed
        return _Scope(tracer.start_span(
            name, context=_ROOT, kind=_KINDS[kind], attributes=_attributes(attributes, details),
            links=None if remote is None else [_Link(remote)]))
    # without a carrier: a child of the current span, if any
    parent = None if remote is None else _in_context(_trace.NonRecordingSpan(remote), _ROOT)
    return _Scope(tracer.start_span(name, context=parent, kind=_KINDS[kind],
                                    attributes=_attributes(attributes, details)))


def internal_span(name: str, *, attributes: LazyAttributes = None,
                  details: LazyAttributes = None) -> SpanScope:
    """A span for local work (a cron run, a singleton start), child of the current span."""
    tracer = _tracer()
    if tracer is None:
        return _OFF
    return _Scope(tracer.start_span(name, kind=_KINDS["internal"],
                                    attributes=_attributes(attributes, details)))


def traced_context(context: RequestContext) -> RequestContext:
    """``context`` with the current span's trace and span id (unchanged without one)."""
    if _tracer() is None:
        return context
    span_context = _current_span().get_span_context()
    if not span_context.is_valid:
        return context
    # not dataclasses.replace: this runs on every traced message
    return RequestContext(context.tenant_id, context.request_id, context.user,
                          f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}",
                          context.cluster)


def http_span(scope: Mapping[str, Any], carrier: Mapping[str, str], *,
              tenant: str | None, request_id: str | None) -> SpanScope:
    """The ``SERVER`` span of one HTTP request (ASGI ``scope``), child of ``carrier``'s span.

    ``carrier`` holds the request's validated ``traceparent``; a ``tracestate``
    header of the request joins it. Named ``<METHOD> <route>`` when the
    framework put the matched route in the scope (Starlette, FastAPI), else
    ``<METHOD>`` (the raw path would make one span name per URL). Set
    ``http.response.status_code`` on the handle; a status of 500 or more marks
    the span failed.
    """
    tracer = _tracer()
    if tracer is None or scope.get("type") != "http":
        return contextlib.nullcontext(_NO_SPAN)
    return _http(tracer, scope, carrier, tenant, request_id)


@contextlib.contextmanager
def _http(tracer: Any, scope: Mapping[str, Any], carrier: Mapping[str, str],
          tenant: str | None, request_id: str | None) -> Iterator[SpanHandle]:
    method = str(scope.get("method") or "HTTP")
    # an outer instrumentation (OpenTelemetry's own ASGI middleware) already made the
    # request's span: be its child; else continue the caller's traceparent
    outer = _trace.get_current_span().get_span_context().is_valid
    full = {} if outer else dict(carrier)
    if TRACEPARENT_HEADER in full:
        for key, value in scope.get("headers") or ():
            if bytes(key).lower() == b"tracestate":
                full["tracestate"] = bytes(value).decode("latin-1")
    attributes = {
        "http.request.method": method, "url.path": scope.get("path"),
        "url.scheme": scope.get("scheme"), "covey.tenant": tenant,
        "covey.request_id": request_id,
    }
    with consumer_span(method, full, link=False, kind="server",
                       attributes=attributes) as span:
        try:
            yield span
        finally:
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            status = span.status_code
            if status is not None and status >= 500:
                span.fail(f"HTTP {status}")
