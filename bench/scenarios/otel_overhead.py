"""What covey's OpenTelemetry spans cost: persisted-RPC throughput traced vs untraced.

The ``persisted-rpc`` set-up (two runner processes, a client-only caller, 1000
entity ids, 300 shards, a scratch PostgreSQL database, 64 concurrent callers of
``Bench.put``), measured in alternating windows: untraced, traced, untraced,
traced, … in the same run, so drift of the shared machine hits both sides.

* traced: every process (the caller and both runners) has the OpenTelemetry SDK
  with a ``BatchSpanProcessor``, every span sampled (``ALWAYS_ON``), and an
  exporter that counts the spans and drops them. A persisted call makes two
  spans: ``send Bench.put`` in the caller, ``process Bench.put`` on its runner.
* untraced: covey's spans are off (``use_tracer_provider(NoOpTracerProvider())``),
  which is what an application without a configured SDK gets.

The runners serve this module (``bench.scenarios.otel_overhead:cluster``, the
bench app's cluster); the switch between windows is a file whose existence the
runners poll every 20 ms (:data:`TOGGLE_ENV` names it).

* ``calls_per_s_untraced`` / ``calls_per_s_traced``: median of each side's windows.
* ``otel_overhead_pct``: ``(1 - median(traced / untraced)) * 100`` over the pairs
  of neighbouring windows (which side runs first alternates); the issue's
  bound is ``<= 25``.
* ``cpu_us_per_call_untraced`` / ``_traced``: CPU of the caller and both runners
  (not PostgreSQL) per call; ``caller_busy_*``: the share of one core the
  caller's event loop used (near 1.0: the caller is the bottleneck).
* ``spans_caller`` / ``spans_runners``: spans the exporters received (the
  runners' count proves their side was traced).

``COVEY_BENCH_OTEL_VARIANT`` picks what "traced" means, to split the overhead
into its parts (``variant`` in the result; bench/RESULTS.md has the figures):

* ``sdk`` (the default, what issue 15 measures): covey's spans as shipped.
* ``bare-sdk``: covey's entity span helpers replaced by a bare
  ``tracer.start_span(name)`` / ``span.end()`` pair, same SDK, processor and
  exporter: no attributes, no link, no trace context in the message, the span
  not made current. Less than any tracing of a client and a handler span can
  do with the SDK: a floor for what the SDK itself costs here.
* ``no-sdk``: covey's helpers as shipped, with a tracer that makes
  non-recording spans with fresh ids (no SDK): what covey's own part costs
  (attributes, propagation, context), plus the id generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._runners import bench_app, cluster_of_two, log, scratch_database, server_settings
from .persisted_rpc import put_call
from .volatile_rpc import CONCURRENCY, ENTITIES, throughput

TOGGLE_ENV = "COVEY_BENCH_OTEL_TOGGLE"
VARIANT_ENV = "COVEY_BENCH_OTEL_VARIANT"
VARIANTS = ("sdk", "bare-sdk", "no-sdk")
POLL_S = 0.02

cluster = bench_app.cluster  # what ``covey run bench.scenarios.otel_overhead:cluster`` serves


def _traced_provider(count_file: str | None = None) -> tuple[Any, list[int]]:
    """An SDK provider (every span sampled, batch processor) whose exporter counts."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    counted = [0]
    if variant() == "no-sdk":
        return _ids_only_provider(counted, count_file), counted

    class CountingExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            counted[0] += len(spans)
            if count_file is not None:
                Path(count_file).write_text(str(counted[0]))
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(CountingExporter()))
    return provider, counted


def variant() -> str:
    """What "traced" means in this run (``COVEY_BENCH_OTEL_VARIANT``, see the module doc)."""
    chosen = os.environ.get(VARIANT_ENV) or "sdk"
    if chosen not in VARIANTS:
        raise SystemExit(f"{VARIANT_ENV} must be one of {', '.join(VARIANTS)}, got {chosen!r}")
    return chosen


def _ids_only_provider(counted: list[int], count_file: str | None) -> Any:
    """``no-sdk``: a provider whose spans record nothing but have fresh, valid ids."""
    import random

    from opentelemetry import trace

    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)

    class IdsOnlyTracer:
        def start_span(self, name: str, context: Any = None, **_: Any) -> Any:
            counted[0] += 1
            if count_file is not None and counted[0] % 1000 == 0:
                Path(count_file).write_text(str(counted[0]))
            parent = trace.get_current_span(context).get_span_context()
            trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128)
            return trace.NonRecordingSpan(trace.SpanContext(
                trace_id, random.getrandbits(64), False, sampled))

    class IdsOnlyProvider:
        def get_tracer(self, *_: Any, **__: Any) -> IdsOnlyTracer:
            return IdsOnlyTracer()

        def force_flush(self) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    return IdsOnlyProvider()


class _BareSpan:
    """``bare-sdk``: ends its span on exit; nothing else (see the module doc)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def __enter__(self) -> Any:
        from covey.core.runtime import SpanHandle

        return SpanHandle()  # a handle that records nothing

    def __exit__(self, *_: object) -> None:
        self._span.end()


def _use_bare_spans() -> None:
    """``bare-sdk``: swap covey's entity span helpers for a bare start/end pair."""
    from covey.core import _tracing
    from covey.entities import _client, _runtime

    def bare(name: str, carrier: Any, **_: Any) -> Any:
        tracer = _tracing._tracer()
        return _tracing._OFF if tracer is None else _BareSpan(tracer.start_span(name))

    setattr(_client, "producer_span", bare)  # noqa: B010 - swapped on purpose
    setattr(_runtime, "consumer_span", bare)  # noqa: B010 - swapped on purpose


def _follow_toggle(toggle: str) -> None:
    """In a runner process: trace while the toggle file exists."""
    from opentelemetry.trace import NoOpTracerProvider

    from covey.core.runtime import use_tracer_provider

    if variant() == "bare-sdk":
        _use_bare_spans()
    provider, _ = _traced_provider(f"{toggle}.spans.{os.getpid()}")
    off = NoOpTracerProvider()

    def poll() -> None:
        while True:
            use_tracer_provider(provider if os.path.exists(toggle) else off)
            time.sleep(POLL_S)

    use_tracer_provider(off)
    threading.Thread(target=poll, name="otel-toggle", daemon=True).start()


if os.environ.get(TOGGLE_ENV) and __name__ == "bench.scenarios.otel_overhead":
    _follow_toggle(os.environ[TOGGLE_ENV])  # imported by a runner process


def shape(quick: bool) -> tuple[int, float, float]:
    """(window pairs, warm-up s per window, window s)."""
    return (4, 0.3, 1.5) if quick else (8, 1.0, 5.0)


async def measure(quick: bool) -> dict[str, Any]:
    """Persisted-RPC throughput with tracing off and on, alternating; see the module doc."""
    from opentelemetry.trace import NoOpTracerProvider

    from covey.core.runtime import use_tracer_provider

    rounds, warmup, window = shape(quick)
    if variant() == "bare-sdk":
        _use_bare_spans()
    began = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="covey-otel-")
    toggle = os.path.join(scratch, "traced")
    previous = os.environ.get(TOGGLE_ENV)
    os.environ[TOGGLE_ENV] = toggle  # the runners inherit it
    provider, caller_spans = _traced_provider()
    samples: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    busy: dict[bool, list[float]] = {False: [], True: []}
    try:
        async with scratch_database() as url, cluster_of_two(
                url, app="bench.scenarios.otel_overhead:cluster") as (runners, caller):
            call = put_call(caller, keyed=False)
            log(f"runners up after {time.monotonic() - began:.1f} s; warm-up: every entity...")
            for first in range(0, ENTITIES, CONCURRENCY):  # activates each entity once
                await asyncio.gather(*(call(n) for n in range(first, first + CONCURRENCY)))
            for pair in range(rounds):
                # alternate which side goes first, so a drift of the machine favours neither
                for traced in (False, True) if pair % 2 == 0 else (True, False):
                    if traced:
                        Path(toggle).touch()  # noqa: ASYNC240 - a local empty file
                        use_tracer_provider(provider)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(toggle)
                        use_tracer_provider(NoOpTracerProvider())
                    pids = [os.getpid(), *(r.process.pid for r in runners)]
                    before, caller_before = _cpu_seconds(pids), _cpu_seconds(pids[:1])
                    part = await throughput(call, max(warmup, 5 * POLL_S), window)
                    used = _cpu_seconds(pids) - before
                    # how busy the caller's one event loop was: 1.0 is a full core
                    busy[traced].append((_cpu_seconds(pids[:1]) - caller_before)
                                        / (window + max(warmup, 5 * POLL_S)))
                    samples[traced].append(part["calls_per_s"])
                    # CPU of the caller and both runners (not PostgreSQL), warm-up included
                    cpu[traced].append(used / max(part["calls"], 1)
                                       * window / (window + max(warmup, 5 * POLL_S)))
                    log(f"  {'traced' if traced else 'untraced'}: {part['calls_per_s']} calls/s,"
                        f" {cpu[traced][-1] * 1e6:.0f} us CPU per call,"
                        f" caller {busy[traced][-1]:.0%} busy")
            with contextlib.suppress(FileNotFoundError):
                os.remove(toggle)
            provider.force_flush()
            await asyncio.sleep(0.2)
            runner_spans = _runner_spans(scratch)
    finally:
        use_tracer_provider(None)
        provider.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
        if previous is None:
            os.environ.pop(TOGGLE_ENV, None)
        else:
            os.environ[TOGGLE_ENV] = previous
    untraced = statistics.median(samples[False])
    traced = statistics.median(samples[True])
    # each pair of neighbouring windows gives one ratio; their median is the figure
    ratios = [t / u for u, t in zip(samples[False], samples[True], strict=True)]
    return {
        "otel_overhead_pct": round((1 - statistics.median(ratios)) * 100, 1),
        "calls_per_s_untraced": round(untraced, 1),
        "calls_per_s_traced": round(traced, 1),
        "cpu_us_per_call_untraced": round(statistics.median(cpu[False]) * 1e6),
        "cpu_us_per_call_traced": round(statistics.median(cpu[True]) * 1e6),
        "caller_busy_untraced": round(statistics.median(busy[False]), 2),
        "caller_busy_traced": round(statistics.median(busy[True]), 2),
        "windows_untraced": samples[False],
        "windows_traced": samples[True],
        "spans_caller": caller_spans[0],
        "spans_runners": runner_spans,
        "otel_window_s": window,
        "otel_window_pairs": rounds,
        "runners": len(runners),
    }


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _runner_spans(scratch: str) -> int:
    """Spans the runners' exporters have received so far (their batches land every 5 s)."""
    total = 0
    for path in Path(scratch).glob("traced.spans.*"):
        with contextlib.suppress(ValueError, OSError):
            total += int(path.read_text() or 0)
    return total


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    result = await measure(quick)
    result.update(scenario="otel-overhead", variant=variant(), quick=quick, concurrency=CONCURRENCY,
                  entities=ENTITIES, cpus=os.cpu_count(), postgres=settings)
    return result
