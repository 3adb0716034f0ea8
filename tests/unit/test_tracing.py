"""covey's OpenTelemetry spans and trace propagation (docs/tracing.md).

The SDK's in-memory exporter collects the spans; covey is pointed at the test's
provider with ``use_tracer_provider`` (the global provider can be set only once
per process, so no test sets it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

import covey
from covey.context import RequestContextMiddleware
from covey.core import TRACEPARENT_HEADER, TestClock, current_context
from covey.core.runtime import (
    consumer_span,
    extract_trace,
    inject_trace,
    producer_span,
    tracing_enabled,
    use_tracer_provider,
)
from covey.testing import TestCluster

ROOT = Path(__file__).resolve().parents[2]
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Order(BaseModel):
    order_id: str


class Shop(covey.Entity, type="TracedShop"):
    @covey.rpc
    async def peek(self) -> str:
        return current_context().trace_id or ""

    @covey.rpc(persisted=True)
    async def place(self, order: Order) -> str:
        return order.order_id

    @covey.rpc
    async def broken(self) -> None:
        raise ValueError("no stock")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def lean() -> Iterator[None]:
    """covey's detailed span attributes off (``COVEY_TRACE_DETAILS=0``)."""
    from covey.core import _tracing

    _tracing.use_trace_details(False)
    try:
        yield
    finally:
        _tracing.use_trace_details(True)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# ---- off: nothing to pay ---------------------------------------------------


def test_without_a_configured_provider_nothing_is_traced() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider was set in this process")
    assert not tracing_enabled()
    carrier = {TRACEPARENT_HEADER: INCOMING}
    with producer_span("send X.y", carrier) as span:
        assert not span.recording
    assert carrier == {TRACEPARENT_HEADER: INCOMING}  # covey's own traceparent travels on
    assert inject_trace({}) == {}


def test_a_noop_provider_turns_covey_spans_off(spans: InMemorySpanExporter) -> None:
    use_tracer_provider(trace.NoOpTracerProvider())
    assert not tracing_enabled()
    with consumer_span("process X.y", {TRACEPARENT_HEADER: INCOMING}, link=True):
        pass
    assert spans.get_finished_spans() == ()


def test_covey_works_without_opentelemetry_installed() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # import fails like when absent
        "import asyncio, covey\n"
        "from covey.core.runtime import producer_span, tracing_enabled, inject_trace\n"
        "from covey.testing import TestCluster\n"
        "class Shop(covey.Entity, type='Shop'):\n"
        "    @covey.rpc(persisted=True)\n"
        "    async def place(self, order_id: str) -> str: return order_id\n"
        "async def main():\n"
        "    async with TestCluster(Shop, runners=1) as tc:\n"
        "        assert await tc.client(Shop, 's').place('o1') == 'o1'\n"
        "    with producer_span('send X.y', {}) as span: assert not span.recording\n"
        "    assert not tracing_enabled() and inject_trace({}) == {}\n"
        "    print('ok')\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ---- entity calls ----------------------------------------------------------


async def test_volatile_call_process_span_is_a_child_of_the_send_span(
        spans: InMemorySpanExporter) -> None:
    async with TestCluster(Shop, runners=2) as tc:
        tracer = trace.get_tracer("test", tracer_provider=_provider(spans))
        with tracer.start_as_current_span("caller") as caller:
            seen = await tc.client(Shop, "s1").peek()
    send, process = one(spans, "send TracedShop.peek"), one(spans, "process TracedShop.peek")
    trace_id = caller.get_span_context().trace_id
    assert send.kind is SpanKind.CLIENT and process.kind is SpanKind.SERVER
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert send.parent is not None and send.parent.span_id == caller.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert seen == format(trace_id, "032x")  # the handler's request context names the trace
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "covey"
    assert process.attributes["covey.entity.id"] == "s1"
    assert str(process.attributes["covey.runner"]).startswith("runner:")


async def test_persisted_call_process_span_links_to_the_send_span(
        spans: InMemorySpanExporter, lean: None) -> None:
    async with TestCluster(Shop, runners=2) as tc:
        assert await tc.client(Shop, "s2").place(Order(order_id="o-7")) == "o-7"
    send, process = one(spans, "send TracedShop.place"), one(spans, "process TracedShop.place")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert process.parent is None  # a trace of its own: each attempt is one
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert [link.context.trace_id for link in process.links] == [send.context.trace_id]
    assert send.attributes is not None and process.attributes is not None
    assert send.attributes["messaging.message.id"] == process.attributes["messaging.message.id"]
    # without details, the OpenTelemetry messaging attributes only
    assert dict(send.attributes) == {
        "messaging.system": "covey", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": "TracedShop",
        "messaging.message.id": send.attributes["messaging.message.id"]}
    assert dict(process.attributes) == {
        **send.attributes, "messaging.operation.name": "process",
        "messaging.operation.type": "process"}


async def test_by_default_the_spans_name_the_entity_shard_and_runner(
        spans: InMemorySpanExporter) -> None:
    async with TestCluster(Shop, runners=2) as tc:
        with covey.core.use_context(covey.core.RequestContext(tenant_id="acme")):
            await tc.client(Shop, "s4").place(Order(order_id="o-8"))
    send, process = one(spans, "send TracedShop.place"), one(spans, "process TracedShop.place")
    assert send.attributes is not None and process.attributes is not None
    for span in (send, process):
        assert span.attributes["covey.entity.id"] == "s4"
        assert span.attributes["covey.rpc"] == "place"
        assert span.attributes["covey.tenant"] == "acme"
    assert send.attributes["covey.shard"] == process.attributes["covey.shard"]
    assert str(process.attributes["covey.runner"]).startswith("runner:")


async def test_a_failing_handler_marks_both_spans_failed(spans: InMemorySpanExporter) -> None:
    async with TestCluster(Shop, runners=1) as tc:
        with pytest.raises(covey.EntityError):
            await tc.client(Shop, "s3").broken()
    assert one(spans, "process TracedShop.broken").status.status_code is StatusCode.ERROR
    send = one(spans, "send TracedShop.broken")
    assert send.status.status_code is StatusCode.ERROR
    assert [e.name for e in send.events] == ["exception"]


# ---- jobs, cron, singletons ------------------------------------------------


async def test_each_job_attempt_is_a_span_linked_to_the_submitter(
        spans: InMemorySpanExporter) -> None:
    failures = [1]

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("traced.mail", retry=covey.Retry(max_attempts=3,
                                                      backoff=covey.exponential(0.01, 0.02)))
        async def mail(job: covey.JobContext, order: Order) -> str:
            if failures[0]:
                failures[0] -= 1
                raise ConnectionError("smtp down")
            return job.context.trace_id or ""

    async with TestCluster(runners=2, configure=configure) as tc:
        tracer = trace.get_tracer("test", tracer_provider=_provider(spans))
        with tracer.start_as_current_span("submit") as submitter:
            handle = await tc.client_member.jobs.submit("traced.mail", Order(order_id="j"))
        trace_of_run = await handle.result(timeout=10)
    runs = named(spans, "run job traced.mail")
    assert len(runs) == 2
    for run in runs:
        assert run.kind is SpanKind.CONSUMER and run.parent is None
        assert [link.context.span_id for link in run.links] == [
            submitter.get_span_context().span_id]
    failed, succeeded = sorted(runs, key=lambda s: s.start_time or 0)
    assert failed.status.status_code is StatusCode.ERROR
    assert succeeded.status.status_code is StatusCode.UNSET
    assert succeeded.attributes is not None and succeeded.attributes["covey.job.attempt"] == 2
    assert trace_of_run == format(succeeded.context.trace_id, "032x")


async def test_cron_runs_and_singleton_starts_have_spans(spans: InMemorySpanExporter) -> None:
    start = 1_767_225_600.0
    clock = TestClock(start + 0.5)
    ticked: list[float] = []
    started = asyncio.Event()

    def configure(cluster: covey.Cluster) -> None:
        @cluster.cron("* * * * * *", name="traced-tick")
        async def tick(t: covey.CronTick) -> None:
            ticked.append(t.scheduled.timestamp())

        @cluster.singleton("traced-leader")
        async def leader(ctx: covey.SingletonContext[None]) -> None:
            started.set()

    async with TestCluster(runners=1, clock=clock, configure=configure):
        for _ in range(12):
            await clock.advance(0.25)
            for _ in range(20):
                await asyncio.sleep(0)
        await asyncio.wait_for(started.wait(), 5)
        await until(lambda: len(named(spans, "run cron traced-tick")) >= 2)
    run = named(spans, "run cron traced-tick")[0]
    process = {s.context.span_id: s for s in named(spans, "process covey.Cron.tick")}
    assert run.parent is not None and run.parent.span_id in process  # inside the tick's span
    assert run.attributes is not None and run.attributes["covey.cron.name"] == "traced-tick"
    singleton = one(spans, "start singleton traced-leader")
    assert singleton.attributes is not None
    assert singleton.attributes["covey.singleton.attempt"] == 0


# ---- HTTP in ---------------------------------------------------------------


class _Route:
    path = "/orders/{order_id}"


async def _call(app: Callable[..., Awaitable[None]], headers: list[tuple[bytes, bytes]],
                path: str = "/orders/42") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "scheme": "http",
             "headers": headers}
    await app(scope, receive, send)
    return sent


async def test_http_span_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["route"] = _Route()  # what Starlette / FastAPI leave after routing
        seen.append(current_context())
        seen.append(inject_trace({}))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = RequestContextMiddleware(app)
    await _call(middleware, [(b"traceparent", INCOMING.encode()), (b"tracestate", b"k=v"),
                             (b"x-tenant-id", b"acme")])
    span = one(spans, "GET /orders/{order_id}")
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == INCOMING.split("-")[1]
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.parent.is_remote
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 201
    assert span.attributes["http.route"] == "/orders/{order_id}"
    assert span.attributes["covey.tenant"] == "acme"
    context, carrier = seen
    assert context.span_id == format(span.context.span_id, "016x")  # logs name this span
    assert carrier["traceparent"].split("-")[2] == context.span_id
    assert carrier["tracestate"] == "k=v"


async def test_http_span_starts_a_trace_and_fails_on_5xx(spans: InMemorySpanExporter) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await _call(RequestContextMiddleware(app), [(b"traceparent", b"not-a-traceparent")])
    span = one(spans, "GET")  # no route known: the method alone, never the raw path
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR


def _provider(exporter: InMemorySpanExporter) -> Any:
    from covey.core import _tracing

    return _tracing._override


@pytest.mark.parametrize("value", [
    INCOMING.upper(),                                            # hex must be lower-case
    "ff" + INCOMING[2:],                                         # version ff is invalid
    INCOMING + "-extra",                                         # version 00 has 4 fields
    "00-" + "0" * 32 + "-b7ad6b7169203331-01",                   # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",   # all-zero span id
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",   # not hex
    "garbage",
])
def test_a_malformed_traceparent_is_ignored(spans: InMemorySpanExporter, value: str) -> None:
    assert extract_trace({TRACEPARENT_HEADER: value}) is None
    with consumer_span("process X.y", {TRACEPARENT_HEADER: value}, link=True):
        pass
    with consumer_span("process X.z", {TRACEPARENT_HEADER: value}, link=False):
        pass
    linked, child = one(spans, "process X.y"), one(spans, "process X.z")
    assert linked.links == () and linked.parent is None and child.parent is None


def test_a_later_version_is_read_by_its_first_fields(spans: InMemorySpanExporter) -> None:
    later = "01" + INCOMING[2:] + "-what-comes-next"
    context = extract_trace({TRACEPARENT_HEADER: later, "tracestate": "k=v"})
    remote = trace.get_current_span(context).get_span_context()
    assert format(remote.trace_id, "032x") == INCOMING.split("-")[1]
    assert remote.is_remote and remote.trace_state.get("k") == "v"
    with consumer_span("process X.y", {TRACEPARENT_HEADER: later}, link=False):
        pass
    assert one(spans, "process X.y").parent is not None
