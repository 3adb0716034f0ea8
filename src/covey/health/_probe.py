"""What a probe answers, and the state one check keeps between runs.

A :class:`Probe` is the answer of ``live()``, ``ready()`` or ``report()``: ``ok``
for the HTTP status (200 or 503) and a JSON-ready body in the shape of
``application/health+json`` (draft-inadarei-api-health-check). A
:class:`CheckState` is what the background loop remembers of one check: its
consecutive failures, its last latency and error, and a one-minute window of
latencies for the percentile.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

#: A check's or a probe's status, as the health+json draft names them.
Status = Literal["pass", "warn", "fail"]

#: The most latencies one check keeps for its percentile (a minute at 2 s is 30).
MAX_SAMPLES = 1000


@dataclass(frozen=True)
class Probe:
    """The answer of a health probe.

    Attributes:
        ok: serve it as 200 when true, 503 when false.
        body: the JSON body (``application/health+json``): ``status`` (``pass``,
            ``warn`` or ``fail``), ``output`` (why, when not ``pass``) and
            ``checks`` (per check key, a list of observations).
    """

    ok: bool
    body: dict[str, Any]


@dataclass
class CheckState:
    """One registered check and what its runs found so far.

    Attributes:
        key: the check's key in the report (``"postgres:responseTime"``).
        check: the coroutine function to run; raising, returning ``False`` or
            outliving ``timeout`` is a failed run.
        critical: failing it makes the runner unready (else it only warns).
        timeout: the bound on one run, in seconds.
        component_type: the draft's ``componentType`` (``datastore``, ``system``,
            ``component``).
        builtin: one of covey's own checks (not removable, not in ``add``).
        observe: what the check measures besides its latency (no I/O), merged
            into its report entry (``observedValue`` of ``shards:owned``: owned).
    """

    key: str
    check: Callable[[], Awaitable[object]]
    critical: bool
    timeout: float
    component_type: str = "component"
    builtin: bool = False
    observe: Callable[[], dict[str, Any]] | None = None
    ran: bool = False
    failures: int = 0
    latency_ms: float | None = None
    error: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    checked_at: float | None = None
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def record(self, *, error: str | None, latency_ms: float, now: float,
               monotonic: float, window: float) -> None:
        """Remember one run: its latency, and its error (``None``: it passed)."""
        self.ran = True
        self.latency_ms = latency_ms
        self.checked_at = now
        self.error = error
        if error is None:
            self.failures = 0
        else:
            self.failures += 1
            self.last_error, self.last_error_at = error, now
        self.samples.append((monotonic, latency_ms))
        while self.samples and (self.samples[0][0] < monotonic - window
                                or len(self.samples) > MAX_SAMPLES):
            self.samples.popleft()

    def status(self, failures: int) -> Status:
        """``fail`` once a critical check failed ``failures`` runs in a row;
        ``warn`` for a failing non-critical one, a first miss, or no run yet."""
        if not self.ran or self.error is not None:
            if self.critical and self.failures >= failures:
                return "fail"
            return "warn"
        return "pass"

    def entry(self, failures: int) -> dict[str, Any]:
        """This check's observation in the report."""
        latencies = [latency for _, latency in self.samples]
        out: dict[str, Any] = {
            "componentType": self.component_type,
            "status": self.status(failures),
            "critical": self.critical,
            "observedValue": _ms(self.latency_ms),
            "observedUnit": "ms",
            "latencyMs": _ms(self.latency_ms),
            "latencyP50Ms": _ms(statistics.median(latencies)) if latencies else None,
            "consecutiveFailures": self.failures,
            "time": iso(self.checked_at),
        }
        if self.observe is not None:
            out.update(self.observe())
        if not self.ran:
            out["output"] = "not checked yet"
        elif self.error is not None:
            out["output"] = self.error
        if self.last_error is not None:
            out["lastError"] = self.last_error
            out["lastErrorTime"] = iso(self.last_error_at)
        return out


def iso(when: float | None) -> str | None:
    """``when`` (seconds since the epoch) as RFC 3339 UTC text."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def worst(statuses: list[Status]) -> Status:
    """The overall status of several: any ``fail`` fails, any ``warn`` warns."""
    if "fail" in statuses:
        return "fail"
    return "warn" if "warn" in statuses else "pass"
