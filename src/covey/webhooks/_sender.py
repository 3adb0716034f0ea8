"""Delivering one webhook: the handler of the ``covey.webhook`` job.

Each attempt reads the endpoint (its URL, secrets and schedule may have changed
since the message was sent), signs the stored body afresh (a new timestamp, the
same ``webhook-id``), and POSTs it through a client that checks and pins the
target address and never follows a redirect. The answer decides: 2xx delivered;
410 disables the endpoint; anything else (or no answer) retries on the
endpoint's schedule, or after the receiver's ``Retry-After`` on 429 and 503,
until the schedule is spent and the delivery goes to the dead-letter.

Per endpoint and runner, a :class:`Gate` bounds the attempts in flight and
trips a circuit breaker after consecutive failures, so a slow or dead receiver
holds a bounded share of the runner and fails fast while it is down.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel

from covey.core import (
    Clock,
    ClusterError,
    Reason,
    WebhookError,
    WebhookOptions,
    current_context,
    metrics,
)
from covey.core.runtime import inject_trace
from covey.jobs import JobContext, Retry
from covey.jobs.runtime import JobSpec
from covey.webhooks._attempts import (
    MAX_RESPONSE_CHARS,
    Attempt,
    AttemptFailed,
    DeliveryFailed,
    Outcome,
)
from covey.webhooks._endpoints import Endpoint, EndpointRegistry
from covey.webhooks._signing import webhook_headers
from covey.webhooks._targets import Resolver
from covey.webhooks._transport import Answer, WebhookClient, make_client

log = logging.getLogger("covey.webhooks")

WEBHOOK_JOB = "covey.webhook"
USER_AGENT = "covey-webhooks/1"
#: the longest Retry-After honoured (a day); a longer one is cut to this
MAX_RETRY_AFTER = 86_400.0
#: jitter of the schedule: each retry waits 90-110 % of its delay
JITTER = 0.1
#: deliveries of one runner waiting for their endpoint's slot (beyond: the job backlog)
WAITING_LIMIT = 100_000


class DeliveryOrder(BaseModel):
    """The job's payload: one message for one endpoint."""

    message_id: str
    endpoint_id: str
    type: str
    body: str


@dataclass
class Gate:
    """One endpoint's share of a runner: a concurrency limit and a circuit breaker."""

    slots: asyncio.Semaphore
    limit: int
    failures: int = 0
    open_until: float = 0.0
    trial: bool = False

    def admits(self, now: float) -> bool:
        """Whether an attempt may go out now (closed, or the one trial after cooldown)."""
        if now >= self.open_until:
            if self.open_until and self.trial:
                return False  # half-open: a trial is already under way
            if self.open_until:
                self.trial = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures, self.open_until, self.trial = 0, 0.0, False

    def failed(self, now: float, threshold: int, cooldown: float) -> None:
        self.failures += 1
        if self.trial or self.failures >= threshold:
            self.open_until, self.trial = now + cooldown, False


class WebhookSender:
    """Makes the attempts of the webhook deliveries this runner owns."""

    def __init__(self, registry: EndpointRegistry, clock: Clock, options: WebhookOptions, *,
                 resolver: Resolver | None = None) -> None:
        self._registry = registry
        self._clock = clock
        self._options = options
        self._resolver = resolver
        self._clients: dict[bool, WebhookClient] = {}
        self._gates: dict[str, Gate] = {}
        # requests in flight on this runner, all endpoints together; taken only once
        # the endpoint's own slot is held, so a slow endpoint's waiting deliveries hold
        # nothing the others need
        self._in_flight = asyncio.Semaphore(options.concurrency)

    def spec(self) -> JobSpec:
        """The ``covey.webhook`` job: no retry but the ones an attempt asks for.

        Its job concurrency is only a bound on waiting deliveries: what limits the
        requests is each endpoint's gate, then the runner's ``in flight`` slots.
        """
        return JobSpec(WEBHOOK_JOB, self.deliver, DeliveryOrder,
                       Retry(max_attempts=64, retry_on=(), jitter=False), None, 0,
                       WAITING_LIMIT)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def _client(self, allow_private: bool) -> WebhookClient:
        private = allow_private or self._options.allow_private
        client = self._clients.get(private)
        if client is None:
            client = self._clients[private] = make_client(
                allow_private=private, resolver=self._resolver,
                limit=self._options.concurrency)
        return client

    def _gate(self, endpoint: Endpoint) -> Gate:
        gate = self._gates.get(endpoint.id)
        if gate is None or gate.limit != endpoint.concurrency:
            gate = self._gates[endpoint.id] = Gate(asyncio.Semaphore(endpoint.concurrency),
                                                    endpoint.concurrency)
        return gate

    # ---- one attempt -----------------------------------------------------

    async def deliver(self, job: JobContext, order: DeliveryOrder) -> str:
        """Make attempt ``job.attempt``; the job's result is the attempt's record."""
        number = job.attempt
        try:
            endpoint = await self._registry.get(order.endpoint_id)
        except ClusterError as exc:  # the store is down: try again soon, not an attempt lost
            raise AttemptFailed(Attempt(number, self._clock.now(), "network_error",
                                        error=f"reading the endpoint failed: {exc}"), 5.0) from exc
        if endpoint is None or not endpoint.enabled:
            outcome: Outcome = "endpoint_deleted" if endpoint is None else "endpoint_disabled"
            reason = None if endpoint is None else endpoint.disabled_reason
            metrics.WEBHOOK_DEAD.labels(order.endpoint_id).inc()
            raise DeliveryFailed(Attempt(number, self._clock.now(), outcome, error=reason))
        gate = self._gate(endpoint)
        async with gate.slots:
            # asked once a slot is free: the attempts that waited for it see the
            # failures of the ones before them
            if not gate.admits(self._clock.monotonic()):
                attempt = Attempt(number, self._clock.now(), "circuit_open",
                                  error="the endpoint's circuit breaker is open")
                metrics.WEBHOOK_ATTEMPTS.labels(endpoint.id, "circuit_open").inc()
                raise self._failure(endpoint, attempt, None)
            try:
                async with self._in_flight:
                    attempt, response = await self._attempt(endpoint, order, number)
            except BaseException:
                gate.trial = False  # a trial cut short (cancelled): the next one may try
                raise
        metrics.WEBHOOK_ATTEMPTS.labels(endpoint.id, attempt.outcome).inc()
        if attempt.outcome == "delivered":
            gate.succeeded()
            if endpoint.failing_since is not None:
                await self._report(endpoint.id, failing_since=None)
            return attempt.to_json()
        gate.failed(self._clock.monotonic(), self._options.breaker_failures,
                    self._options.breaker_cooldown)
        if attempt.status == 410:
            await self._disable(endpoint, "the receiver answered 410 Gone")
            raise self._dead(endpoint, attempt)
        await self._note_failure(endpoint)
        raise self._failure(endpoint, attempt, response)

    async def _attempt(self, endpoint: Endpoint, order: DeliveryOrder,
                       number: int) -> tuple[Attempt, Answer | None]:
        body = order.body.encode()
        now = self._clock.now()
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        headers.update(endpoint.headers)
        headers.update(webhook_headers(order.message_id, int(now), body,
                                       endpoint.signing_secrets(now)))
        trace = current_context().to_headers()
        inject_trace(trace)
        if "traceparent" in trace:
            headers["traceparent"] = trace["traceparent"]
        timeout = endpoint.timeout or self._options.timeout
        started = time.perf_counter()
        try:
            answer = await self._client(endpoint.allow_private).post(
                endpoint.url, body, headers, timeout=timeout)
        except WebhookError as exc:
            return Attempt(number, now, "refused", error=str(exc)), None
        except TimeoutError:
            return Attempt(number, now, "timeout", latency_ms=_ms(started),
                           error=f"no answer within {timeout} s"), None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Attempt(number, now, "network_error", latency_ms=_ms(started),
                           error=f"{type(exc).__name__}: {exc}"[:MAX_RESPONSE_CHARS]), None
        latency = _ms(started)
        metrics.WEBHOOK_SECONDS.labels(endpoint.id).observe(latency / 1000)
        outcome: Outcome = "delivered" if 200 <= answer.status < 300 else "http_error"
        return Attempt(number, now, outcome, status=answer.status, latency_ms=latency,
                       response=answer.text[:MAX_RESPONSE_CHARS] or None), answer

    # ---- after a failed attempt -------------------------------------------

    def _failure(self, endpoint: Endpoint, attempt: Attempt,
                 response: Answer | None) -> Exception:
        """The retry the schedule (or the receiver) asks for, or the dead-letter."""
        if attempt.number > len(endpoint.schedule):
            return self._dead(endpoint, attempt)
        delay = endpoint.schedule[attempt.number - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        if response is not None and response.status in (429, 503):
            asked = retry_after(response.headers.get("retry-after"), self._clock.now())
            if asked is not None:
                delay = asked
        log.info("webhook %s attempt %d to %s failed (%s); retry in %.1f s",
                 endpoint.id, attempt.number, endpoint.url, attempt.outcome, delay)
        return AttemptFailed(attempt, delay)

    def _dead(self, endpoint: Endpoint, attempt: Attempt) -> DeliveryFailed:
        log.warning("webhook delivery to %s dead after attempt %d (%s)", endpoint.id,
                    attempt.number, attempt.outcome)
        metrics.WEBHOOK_DEAD.labels(endpoint.id).inc()
        return DeliveryFailed(attempt)

    async def _note_failure(self, endpoint: Endpoint) -> None:
        """Start the endpoint's failing clock, or disable it once it ran out."""
        now = self._clock.now()
        if endpoint.failing_since is None:
            await self._report(endpoint.id, failing_since=now)
        elif self._options.disable_after and \
                now - endpoint.failing_since >= self._options.disable_after:
            await self._disable(endpoint, f"every delivery failed for "
                                          f"{now - endpoint.failing_since:.0f} s")

    async def _disable(self, endpoint: Endpoint, why: str) -> None:
        log.warning("webhook endpoint %s (%s) disabled: %s", endpoint.id, endpoint.url, why)
        await self._report(endpoint.id, enabled=False, disabled_reason=why,
                           disabled_at=self._clock.now())

    async def _report(self, endpoint_id: str, **changes: Any) -> None:
        try:
            await self._registry.update(endpoint_id, **changes)
        except ClusterError as exc:  # deleted meanwhile, or the store is down: not fatal
            if exc.reason is not Reason.WEBHOOK_ENDPOINT_NOT_FOUND:
                log.warning("could not record the state of endpoint %s: %s", endpoint_id, exc)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
