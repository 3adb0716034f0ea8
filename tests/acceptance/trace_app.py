"""The application of the trace acceptance test: one HTTP pod, one worker pod.

- Pod A: ``uvicorn tests.acceptance.trace_app:app`` — a Starlette app whose
  lifespan runs a covey runner, behind covey's request-context middleware.
  ``POST /orders/{order_id}?entity=…&job=…`` calls the persisted
  ``TraceOrders.place`` of entity ``entity``; the handler submits the job
  ``trace.ship`` with dedupe key ``job``. ``GET /shards`` lists the shards
  this runner owns, so the test can pick an entity served by the other pod and
  a job key served by this one.
- Pod B: ``covey run tests.acceptance.trace_app:cluster``.

With ``COVEY_TEST_TRACE_FILE`` set, the process installs the OpenTelemetry SDK
(every span sampled) with an exporter that appends each finished span to that
file as one JSON line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import covey
from covey.context import RequestContextMiddleware


class Order(BaseModel):
    order_id: str
    job_key: str


class Shipment(BaseModel):
    order_id: str


class TraceOrders(covey.Entity, type="TraceOrders"):
    @covey.rpc(persisted=True)
    async def place(self, order: Order) -> str:
        await ship.submit(Shipment(order_id=order.order_id), dedupe_key=order.job_key)
        return covey.current_context().cluster.runner_id or ""


cluster = covey.Cluster.from_env()
cluster.register(TraceOrders)


@cluster.job("trace.ship")
async def ship(job: covey.JobContext, shipment: Shipment) -> str:
    return job.context.cluster.runner_id or ""


# ---- pod A's HTTP side -----------------------------------------------------------


async def place_order(request: Request) -> JSONResponse:
    order = Order(order_id=request.path_params["order_id"],
                  job_key=request.query_params["job"])
    runner = await cluster.client(TraceOrders, request.query_params["entity"]).place(order)
    return JSONResponse({"handled_by": runner}, status_code=201)


async def shards(request: Request) -> JSONResponse:
    return JSONResponse({"runner": str(cluster.address),
                         "owned": sorted(s.id for s in cluster.sharding.owned)})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with cluster:
        yield


app = RequestContextMiddleware(
    Starlette(routes=[Route("/orders/{order_id}", place_order, methods=["POST"]),
                      Route("/shards", shards)], lifespan=lifespan),
    cluster=cluster,
)


# ---- spans to a file --------------------------------------------------------------


def _install_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    lock = threading.Lock()

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = [json.dumps(_as_dict(span)) + "\n" for span in spans]
            with lock, open(path, "a", encoding="utf-8") as out:
                out.writelines(lines)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "trace-app",
                                                        "process.pid": os.getpid()}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
    trace.set_tracer_provider(provider)


def _as_dict(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": None if span.parent is None else format(span.parent.span_id, "016x"),
        "links": [{"trace_id": format(link.context.trace_id, "032x"),
                   "span_id": format(link.context.span_id, "016x")} for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


if os.environ.get("COVEY_TEST_TRACE_FILE"):
    _install_exporter(os.environ["COVEY_TEST_TRACE_FILE"])
