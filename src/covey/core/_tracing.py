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

TRACESTATE_HEADER = "tracestate"

SpanKindName = Literal["producer", "consumer", "client", "server", "internal"]
AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue | None]
LazyAttributes = Attributes | Callable[[], Attributes] | None

INSTRUMENTATION_NAME = "covey"
"""The instrumentation scope of covey's spans (``otel.scope.name``)."""

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
    span_context = _trace.get_current_span().get_span_context()
    if span_context.is_valid:
        _inject(span_context, carrier)
    return carrier


def _inject(span_context: Any, carrier: MutableMapping[str, str]) -> None:
    carrier[TRACEPARENT_HEADER] = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{span_context.trace_flags:02x}")
    if span_context.trace_state:
        state = span_context.trace_state.to_header()
        if len(state.encode()) <= MAX_HEADER_VALUE_BYTES:  # bounded, like every header
            carrier[TRACESTATE_HEADER] = state


def extract_trace(carrier: Mapping[str, str]) -> Any:
    """The OpenTelemetry ``Context`` whose span is the one ``carrier`` names.

    ``None`` without tracing, or when the carrier has no valid W3C
    ``traceparent`` (a malformed one is ignored, as the spec asks).
    """
    remote = _remote(carrier) if _tracer() is not None else None
    if remote is None:
        return None
    return _trace.set_span_in_context(_trace.NonRecordingSpan(remote))


def _remote(carrier: Mapping[str, str]) -> Any:
    """The remote ``SpanContext`` of the carrier's ``traceparent``, or ``None``."""
    value = carrier.get(TRACEPARENT_HEADER)
    if not value or len(value) < 55:
        return None
    parts = value[:55].split("-")
    if (len(parts) != 4 or parts[0] == "ff" or len(parts[0]) != 2
            or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2
            or (len(value) > 55 and (parts[0] == "00" or value[55] != "-"))):
        return None
    try:
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
        flags = int(parts[3], 16)
        int(parts[0], 16)
    except ValueError:
        return None
    if not trace_id or not span_id or value[:55] != value[:55].lower():
        return None
    state = carrier.get(TRACESTATE_HEADER)
    return _trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=_trace.TraceFlags(flags & 0xFF),
        trace_state=_trace.TraceState.from_header([state]) if state else None)


def _attributes(attributes: LazyAttributes) -> dict[str, AttributeValue]:
    if attributes is None:
        return {}
    values = attributes() if callable(attributes) else attributes
    return {k: v for k, v in values.items() if v is not None}


_KINDS: dict[str, Any] = {}


def _kind(name: SpanKindName) -> Any:
    if not _KINDS:
        _KINDS.update({k.name.lower(): k for k in _trace.SpanKind})
    return _KINDS[name]


class _Scope(SpanHandle):
    """A started span, current (attached) until the ``with`` ends.

    A class rather than a generator context manager: it runs on every traced
    message, twice per call.
    """

    __slots__ = ("_token",)

    def __init__(self, tracer: Any, name: str, kind: SpanKindName, attributes: LazyAttributes,
                 context: Any = None, links: list[Any] | None = None,
                 carrier: MutableMapping[str, str] | None = None) -> None:
        super().__init__(tracer.start_span(name, context=context, kind=_kind(kind),
                                           attributes=_attributes(attributes), links=links))
        self._token = _otel_context.attach(_trace.set_span_in_context(self._span))
        if carrier is not None:
            _inject(self._span.get_span_context(), carrier)

    def __enter__(self) -> SpanHandle:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        span = self._span
        if isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR,
                                          f"{type(error).__name__}: {error}"))
        _otel_context.detach(self._token)
        span.end()


def producer_span(name: str, carrier: MutableMapping[str, str], *,
                  kind: SpanKindName = "producer",
                  attributes: LazyAttributes = None) -> SpanScope:
    """A span for sending work, current inside the ``with``; its context goes into ``carrier``.

    Args:
        name: the span name, e.g. ``send Account.deposit``.
        carrier: the headers the work travels with; gets ``traceparent``.
        kind: ``producer`` for stored work, ``client`` for a call that is awaited.
        attributes: a mapping, or a callable that makes one (only called when
            tracing is on); ``None`` values are left out.

    An exception leaving the block marks the span failed and is re-raised.
    """
    tracer = _tracer()
    if tracer is None:
        return contextlib.nullcontext(_NO_SPAN)
    return _Scope(tracer, name, kind, attributes, carrier=carrier)


def consumer_span(name: str, carrier: Mapping[str, str], *, link: bool,
                  kind: SpanKindName = "consumer",
                  attributes: LazyAttributes = None) -> SpanScope:
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
        attributes: as for :func:`producer_span`.
    """
    tracer = _tracer()
    if tracer is None:
        return contextlib.nullcontext(_NO_SPAN)
    remote = _remote(carrier)
    if link:
        # a root span (its own trace), linked to the creator
        links = None if remote is None else [_trace.Link(remote)]
        return _Scope(tracer, name, kind, attributes, _ROOT, links)
    # without a carrier: a child of the current span, if any
    parent = None if remote is None else _trace.set_span_in_context(
        _trace.NonRecordingSpan(remote), _ROOT)
    return _Scope(tracer, name, kind, attributes, parent)


def internal_span(name: str, *,
                  attributes: LazyAttributes = None) -> SpanScope:
    """A span for local work (a cron run, a singleton start), child of the current span."""
    tracer = _tracer()
    if tracer is None:
        return contextlib.nullcontext(_NO_SPAN)
    return _Scope(tracer, name, "internal", attributes)


def traced_context(context: RequestContext) -> RequestContext:
    """``context`` with the current span's trace and span id (unchanged without one)."""
    if _tracer() is None:
        return context
    span_context = _trace.get_current_span().get_span_context()
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
