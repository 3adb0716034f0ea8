"""Health: the checks a runner runs in the background, and its three probes.

Every check (covey's own and the application's, see :meth:`Health.add`) runs
in one background loop at a fixed interval (``COVEY_HEALTH_INTERVAL``, 2 s),
each bounded by its timeout; a probe only reads what the last runs found, so a
probe never waits on the database and a flood of probes costs nothing:

- :meth:`Health.live` — the process works: the event loop is not lagging and
  the runner's loops tick. Never the database: a database outage must not
  restart every pod at once.
- :meth:`Health.ready` — send this runner traffic: no critical check failed
  ``COVEY_HEALTH_FAILURES`` (2) runs in a row, the lock (LISTEN) connection is
  up and the runner is not draining. The last two are read at the moment of
  the probe, so it turns at once.
- :meth:`Health.report` — every check, its status, last latency, median
  latency over ``COVEY_HEALTH_WINDOW`` and last error (``/health``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from covey.core import Clock, HealthOptions, SystemClock
from covey.core.runtime import TaskSet, check_seconds, invalid_argument
from covey.health._builtin import BuiltinChecks
from covey.health._probe import CheckState, Probe, Status, worst
from covey.health._runners_report import EntityReport
from covey.sharding.runtime import Sharding
from covey.singletons.runtime import SingletonManager
from covey.storage import Storage, WakeupSource

log = logging.getLogger("covey.health")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(:[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
MAX_NAME = 100
#: The loop of the health checks themselves, as the liveness probe names it.
HEALTH_LOOP = "covey-health"
#: The keys of covey's own checks: an application check may not take one.
RESERVED = frozenset({f"{backend}:{what}" for backend in ("postgres", "sqlite", "memory")
                      for what in ("responseTime", "lockConnection")}
                     | {"shards:owned", "singletons:running", "eventLoop:lag",
                        "runnerLoops:ticking", "runner:crashed"})
#: Seconds to the next pass after a critical check's first miss (confirm it soon).
RECHECK = 0.25


@dataclass(frozen=True)
class HealthParts:
    """What a started cluster member shows its health checks.

    Attributes:
        storage: the started storage (its round trip is a critical check).
        service: this member's name in the report (its runner address).
        sharding: membership and ownership; ``None`` on a client-only member.
        singletons: the singletons this runner may run; ``None`` on a client.
        loops: the runner's root task set, whose loops tick (liveness).
        wakeups: the lock (LISTEN) connection, when this runner listens.
        crashed: the error that stopped the runner, if a background task
            crashed (liveness fails: restart the process).
    """

    storage: Storage
    service: str
    sharding: Sharding | None = None
    singletons: SingletonManager | None = None
    loops: TaskSet | None = None
    wakeups: WakeupSource | None = None
    crashed: Callable[[], BaseException | None] | None = None


class Health:
    """The cluster's health checks and probes (``cluster.health``).

    Args:
        options: interval, timeouts and thresholds (``COVEY_HEALTH_*``).
        clock: the time source (tests pass a ``TestClock``).
    """

    def __init__(self, options: HealthOptions | None = None, *,
                 clock: Clock | None = None) -> None:
        self.options = options or HealthOptions()
        self._clock = clock or SystemClock()
        self._checks: dict[str, CheckState] = {}
        self._runs: dict[str, asyncio.Task[str | None]] = {}
        self._passing = asyncio.Lock()  # one pass at a time (the loop's, or check_now's)
        self._tasks = TaskSet(HEALTH_LOOP)  # until start() hands over the runner's
        self._builtin: BuiltinChecks | None = None
        self._started = False
        self._stopped = False
        self._draining = False
        self._lagging = 0  # consecutive lag samples over the limit
        self._lag = 0.0

    # ---- registering -----------------------------------------------------

    def add(self, name: str, check: Callable[[], Awaitable[object]], *, critical: bool = True,
            timeout: float | None = None) -> None:
        """Run ``check`` with the built-in checks, every ``COVEY_HEALTH_INTERVAL``.

        A run fails when ``check`` raises, returns ``False`` or is still running
        after ``timeout`` seconds (it is then cancelled). A critical check that
        fails ``COVEY_HEALTH_FAILURES`` runs in a row makes the runner unready;
        a non-critical one only turns the report to ``warn``.

        Args:
            name: the dependency, shown as ``<name>:responseTime`` in the report
                (a name with a colon, ``"smtp:connection"``, is used as it is).
            check: a coroutine function taking no arguments.
            critical: gate readiness on it.
            timeout: the bound on one run (default ``COVEY_HEALTH_TIMEOUT``).

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]`` names the
                argument) for a malformed or duplicate name, a check that is not
                callable, a non-bool ``critical`` or a timeout that is not a
                positive number of seconds.
        """
        key = _key(name)
        if not callable(check):
            raise invalid_argument("check", f"{check!r} is not callable (pass an async "
                                   "function taking no arguments)")
        if not isinstance(critical, bool):
            raise invalid_argument("critical", f"{critical!r} is not a bool")
        seconds = self.options.timeout if timeout is None else check_seconds(
            "timeout", timeout, positive=True)
        if key in RESERVED:
            raise invalid_argument("name", f"{key!r} is one of covey's own health checks "
                                   "(covey checks its storage itself): choose another name",
                                   name=name)
        if key in self._checks:
            raise invalid_argument("name", f"a health check {key!r} is already registered",
                                   name=name)
        self._checks[key] = CheckState(key, check, critical, seconds)

    # ---- probes ----------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether :meth:`start_draining` was called: readiness fails from then on."""
        return self._draining

    def start_draining(self) -> None:
        """Fail readiness from now on (the first step of a graceful stop)."""
        if not self._draining:
            log.info("draining: readiness fails from now on")
        self._draining = True

    def live(self) -> Probe:
        """Liveness: the event loop does not lag and every runner loop ticks.

        No I/O, and never the database.
        """
        checks = self._liveness_entries()
        status = worst([e["status"] for entries in checks.values() for e in entries])
        ok = status != "fail"
        return Probe(ok, _body("pass" if ok else "fail", checks,
                               None if ok else _failing(checks)))

    def ready(self) -> Probe:
        """Readiness: started, not draining, lock connection up, no critical
        check failing (as of its last runs; no I/O)."""
        reasons = self._unready()
        checks = {k: [s.entry(self.options.failures)] for k, s in self._checks.items()
                  if s.critical}
        checks.update(self._lock_entries())
        ok = not reasons
        return Probe(ok, _body("pass" if ok else "fail", checks,
                               None if ok else "; ".join(reasons)))

    def report(self) -> Probe:
        """Every check, for ``/health`` (``application/health+json``).

        ``ok`` is false when the runner is unready or not live; the body's
        ``status`` is then ``fail``, else ``warn`` while any check warns.
        """
        checks: dict[str, list[dict[str, Any]]] = {
            k: [s.entry(self.options.failures)] for k, s in self._checks.items()}
        checks.update(self._lock_entries())
        checks.update(self._liveness_entries())
        reasons = self._unready()
        live = self.live()
        if not live.ok:
            reasons.append(str(live.body.get("output", "not live")))
        status: Status = "fail" if reasons else worst(
            [e["status"] for entries in checks.values() for e in entries])
        body = _body(status, checks, "; ".join(reasons) if reasons else None)
        body["serviceId"] = self._service()
        body["description"] = "covey cluster member"
        return Probe(status != "fail", body)

    # ---- running ---------------------------------------------------------

    def start(self, tasks: TaskSet, parts: HealthParts) -> None:
        """Add the built-in checks for ``parts`` and start the loop in ``tasks``
        (the runner's; it stops with the runner)."""
        if self._started:
            raise invalid_argument("health", "already started (a cluster starts once)")
        self._started = True
        self._tasks = tasks
        builtin = self._builtin = BuiltinChecks(parts, self._clock, self.options)
        for state in builtin.checks():
            if state.key in self._checks:  # an application check took a built-in's key
                raise invalid_argument("name", f"the health check {state.key!r} is covey's "
                                       "own: give the application's check another name")
        for state in builtin.checks():
            self._checks[state.key] = state
        tasks.spawn(self._loop(), name=HEALTH_LOOP)
        if parts.sharding is not None:  # a runner that hosts: its active entities (dashboard)
            report = EntityReport(parts.storage.state, self._clock, parts.service)
            tasks.spawn(report.run(), name="covey-entities-report")

    async def check_now(self) -> None:
        """Run every check once now (concurrently, each within its timeout) and
        keep what they found; the probes answer from it."""
        async with self._passing:
            states = list(self._checks.values())
            await asyncio.gather(*(self._run(state) for state in states))

    async def _loop(self) -> None:
        clock, interval = self._clock, self.options.interval
        try:
            while True:
                began = clock.monotonic()
                self._tasks.tick(HEALTH_LOOP, interval, began)
                await self.check_now()
                wait = max(0.0, began + interval - clock.monotonic())
                if self._confirming():
                    wait = min(wait, RECHECK)
                before = clock.monotonic()
                await clock.sleep(wait)
                self._sample_lag(clock.monotonic() - before - wait)
        finally:
            self._stopped = True
            for run in self._runs.values():
                run.cancel()

    def _confirming(self) -> bool:
        """Whether a critical check missed but not yet often enough to fail: then
        the next pass comes at once (``RECHECK``), so a real outage turns
        readiness within ``interval + timeout + (failures - 1) * (RECHECK + timeout)``."""
        failures = self.options.failures
        return any(s.critical and 0 < s.failures < failures for s in self._checks.values())

    def _sample_lag(self, lag: float) -> None:
        """One event-loop lag sample: how late a sleep woke."""
        self._lag = max(0.0, lag)
        self._lagging = self._lagging + 1 if self._lag > self.options.lag_limit else 0

    async def _run(self, state: CheckState) -> None:
        clock = self._clock
        began = clock.monotonic()
        previous = self._runs.get(state.key)
        if previous is not None and not previous.done():
            error: str | None = ("the previous run is still running after it was cancelled "
                                 "(the check ignores cancellation)")
        else:
            run = self._runs[state.key] = self._tasks.spawn(
                _call(state.check), name=f"{HEALTH_LOOP}:{state.key}")
            done, _ = await asyncio.wait({run}, timeout=state.timeout)
            if run in done:
                error = run.result()
            else:
                run.cancel()
                error = f"timed out after {state.timeout:g} s"
        latency_ms = (clock.monotonic() - began) * 1000.0
        was_failing = state.error is not None
        state.record(error=error, latency_ms=latency_ms, now=clock.now(),
                     monotonic=clock.monotonic(), window=self.options.window)
        if error is not None and not was_failing:
            log.warning("health check %s failed: %s", state.key, error)
        elif error is None and was_failing:
            log.info("health check %s passes again", state.key)

    # ---- what the probes read --------------------------------------------

    def _unready(self) -> list[str]:
        reasons: list[str] = []
        if not self._started:
            reasons.append("not started")
        elif self._stopped:
            reasons.append("stopped")
        if self._draining:
            reasons.append("draining")
        # at once: the health loop, cancelled with the runner's other tasks, marks
        # itself stopped only when its cancellation has gone through
        crash = self._builtin.crashed() if self._builtin is not None else None
        if crash is not None:
            reasons.append(f"a covey background task crashed: {type(crash).__name__}")
        if self._builtin is not None and not self._builtin.lock_connected():
            reasons.append(f"{self._builtin.lock_key}: the lock (LISTEN) connection is down")
        failures = self.options.failures
        reasons += [f"{k}: {s.error}" for k, s in self._checks.items()
                    if s.status(failures) == "fail"]
        return reasons

    def _lock_entries(self) -> dict[str, list[dict[str, Any]]]:
        if self._builtin is None:
            return {}
        return self._builtin.lock_entries()

    def _liveness_entries(self) -> dict[str, list[dict[str, Any]]]:
        limit, checks = self.options.lag_limit, self.options.lag_checks
        lag_status: Status = ("fail" if self._lagging >= checks
                              else "warn" if self._lagging else "pass")
        lag: dict[str, Any] = {
            "componentType": "system", "status": lag_status,
            "observedValue": round(self._lag * 1000.0, 3), "observedUnit": "ms",
        }
        if lag_status != "pass":
            lag["output"] = (f"the event loop lagged over {limit:g} s in "
                             f"{self._lagging} checks in a row")
        out: dict[str, list[dict[str, Any]]] = {"eventLoop:lag": [lag]}
        crash = self._builtin.crashed() if self._builtin is not None else None
        if crash is not None:
            out["runner:crashed"] = [{
                "componentType": "component", "status": "fail", "observedValue": True,
                "output": f"a covey background task crashed and the runner stopped: "
                          f"{type(crash).__name__}: {crash}"}]
        loops = self._loop_entries()
        if loops:
            out["runnerLoops:ticking"] = loops
        return out

    def _loop_entries(self) -> list[dict[str, Any]]:
        if self._builtin is None or self._stopped:
            return []
        now = self._clock.monotonic()
        entries = []
        for tick in sorted(self._builtin.loop_ticks(), key=lambda t: t.name):
            stall = max(self.options.stall_factor * tick.interval, self.options.interval)
            entry: dict[str, Any] = {"componentId": tick.name, "componentType": "component",
                                     "status": "pass", "observedUnit": "s"}
            if tick.busy_since is not None:
                entry["observedValue"] = round(now - tick.busy_since, 3)
                if now - tick.busy_since > stall:
                    entry["status"] = "warn"  # waiting on storage or a handover: not dead
                    entry["output"] = f"busy for {now - tick.busy_since:.1f} s"
            else:
                entry["observedValue"] = round(now - tick.at, 3)
                if now - tick.at > stall:
                    # while draining the loops stop one after the other: not a hang
                    entry["status"] = "warn" if self._draining else "fail"
                    entry["output"] = (f"no tick for {now - tick.at:.1f} s "
                                       f"(ticks every {tick.interval:g} s)")
            entries.append(entry)
        return entries

    def _service(self) -> str:
        return "not started" if self._builtin is None else self._builtin.service


def _key(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise invalid_argument("name", f"{name!r} is not a non-empty string")
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise invalid_argument("name", f"{name!r} must be at most {MAX_NAME} letters, digits, "
                               "'_', '.' or '-' (optionally 'component:measurement')",
                               name=name)
    return name if ":" in name else f"{name}:responseTime"


async def _call(check: Callable[[], Awaitable[object]]) -> str | None:
    """Run one check: ``None`` when it passed, else why it failed (never raises
    but for cancellation: a failing check must not crash the runner)."""
    try:
        result = check()
        if not inspect.isawaitable(result):
            return f"the check returned {type(result).__name__}, not an awaitable"
        value = await result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        text = str(exc) or "no message"
        return f"{type(exc).__name__}: {text}"
    if value is False:
        return "the check returned False"
    return None


def _body(status: Status, checks: dict[str, list[dict[str, Any]]],
          output: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status}
    if output:
        body["output"] = output
    body["checks"] = checks
    return body


def _failing(checks: dict[str, list[dict[str, Any]]]) -> str:
    return "; ".join(f"{key}{'/' + e['componentId'] if 'componentId' in e else ''}: "
                     f"{e.get('output', e['status'])}"
                     for key, entries in checks.items() for e in entries
                     if e["status"] == "fail")
