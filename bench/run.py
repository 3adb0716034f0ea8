"""Benchmark dispatcher: ``python bench/run.py <scenario> [--quick]``.

Each scenario is a module under ``bench/scenarios/`` with an ``async def
run(quick: bool) -> dict``; the result is printed as ONE JSON object on the last
line of stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path

SCENARIOS: dict[str, str] = {
    "storage": "scenarios.storage",
    "volatile-rpc": "scenarios.volatile_rpc",
    "persisted-rpc": "scenarios.persisted_rpc",
    "failover": "scenarios.failover",
    "handoff": "scenarios.handoff",
    "singleton-failover": "scenarios.singleton_failover",
    "cron-accuracy": "scenarios.cron_accuracy",
    "jobs-throughput": "scenarios.jobs_throughput",
    "jobs-latency": "scenarios.jobs_latency",
    "store-growth": "scenarios.store_growth",
    "entity-state": "scenarios.entity_state",
    "transport": "scenarios.transport",
    "otel-overhead": "scenarios.otel_overhead",
    "readiness": "scenarios.readiness",
    "events-latency": "scenarios.events_latency",
    "events-throughput": "scenarios.events_throughput",
    "workflow-throughput": "scenarios.workflow_throughput",
    "workflow-latency": "scenarios.workflow_latency",
    "workflow-signal": "scenarios.workflow_signal",
    "workflow-sleep": "scenarios.workflow_sleep",
    "webhooks": "scenarios.webhooks",
    "sse-latency": "scenarios.sse_latency",
    "sse-scale": "scenarios.sse_scale",
    "ws-rpc": "scenarios.ws_rpc",
    "ws-reconnect": "scenarios.ws_reconnect",
    "dashboard": "scenarios.dashboard",
    "peers": "scenarios.peers",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="short windows (CI smoke run)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(SCENARIOS[args.scenario])
    result = asyncio.run(module.run(quick=args.quick))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
