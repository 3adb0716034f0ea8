"""Webhook endpoints: what they are, and where they are kept.

Every endpoint of the cluster lives in one versioned value of the state store
(``covey.webhooks/endpoints``), changed by compare-and-set: an operator's change
and a delivery's report (a 410, an endpoint failing for days) never overwrite
each other. Endpoints are few and read on every send and attempt, so each
process keeps the value cached and re-reads it when it is older than a second.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from covey.core import MsgpackCodec, Reason, VersionConflict, WebhookError
from covey.core.runtime import check_seconds, check_text, invalid_argument
from covey.storage import StateStore
from covey.webhooks._secrets import WebhookSecret

ENDPOINTS_KEY = "covey.webhooks/endpoints"
#: retries after the first attempt: 5 s, 5 min, 30 min (Svix's first steps)
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0)
MAX_RETRIES = 30
MAX_TYPES = 100
MAX_HEADERS = 20
#: headers covey sets itself: an endpoint's own headers may not replace them
RESERVED_HEADERS = frozenset({
    "webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
    "host", "transfer-encoding", "connection", "traceparent", "tracestate", "user-agent",
})

T = TypeVar("T")


@dataclass(frozen=True)
class SigningKey:
    """One secret of an endpoint; an old one signs until ``expires_at``."""

    secret: WebhookSecret
    expires_at: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """A registered receiver of webhooks.

    Attributes:
        id: ``ep_`` and a number; what the API, the CLI and metrics name it by.
        url: where deliveries are POSTed (http or https).
        types: the message types it wants: exact (``invoice.paid``), a prefix
            (``invoice.*``) or ``*``; empty means every type.
        tenant: the tenant that owns it: it only receives that tenant's messages
            (an endpoint without a tenant receives the messages sent without one).
        enabled: disabled endpoints get no new deliveries; retries of pending
            ones end in the dead-letter.
        headers: sent with every delivery (not covey's own headers).
        schedule: seconds before each retry; ``len(schedule) + 1`` attempts in all.
        timeout: seconds one attempt may take (``None``: the cluster's default).
        allow_private: this endpoint may be a private address (development).
        concurrency: its deliveries in flight at once on one runner.
        disabled_reason: why it was disabled (by an operator, a 410, failing too long).
        failing_since: when its deliveries started failing without a success since.
    """

    id: str
    url: str
    keys: tuple[SigningKey, ...] = field(repr=False)
    types: tuple[str, ...] = ()
    tenant: str | None = None
    description: str = ""
    enabled: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    timeout: float | None = None
    allow_private: bool = False
    concurrency: int = 20
    created_at: float = 0.0
    disabled_reason: str | None = None
    disabled_at: float | None = None
    failing_since: float | None = None

    @property
    def secret(self) -> WebhookSecret:
        """The current secret: give it to the receiver to verify signatures."""
        return self.keys[0].secret

    def signing_secrets(self, now: float) -> list[WebhookSecret]:
        """The current secret, then the old ones still inside their overlap."""
        return [k.secret for k in self.keys
                if k.expires_at is None or k.expires_at > now]

    def wants(self, message_type: str, tenant: str | None) -> bool:
        """Whether a message of ``message_type`` sent for ``tenant`` goes here."""
        if not self.enabled or tenant != self.tenant:
            return False
        if not self.types:
            return True
        return any(t == "*" or t == message_type
                   or (t.endswith(".*") and message_type.startswith(t[:-1]))
                   for t in self.types)

    def to_plain(self) -> dict[str, Any]:
        return {
            "id": self.id, "url": self.url, "types": list(self.types), "tenant": self.tenant,
            "description": self.description, "enabled": self.enabled,
            "headers": [list(h) for h in self.headers], "schedule": list(self.schedule),
            "timeout": self.timeout, "allow_private": self.allow_private,
            "concurrency": self.concurrency, "created_at": self.created_at,
            "disabled_reason": self.disabled_reason, "disabled_at": self.disabled_at,
            "failing_since": self.failing_since,
            "keys": [[str(k.secret), k.expires_at] for k in self.keys],
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> Endpoint:
        return cls(
            id=data["id"], url=data["url"],
            keys=tuple(SigningKey(WebhookSecret.parse(s), e) for s, e in data["keys"]),
            types=tuple(data.get("types") or ()), tenant=data.get("tenant"),
            description=data.get("description") or "", enabled=bool(data.get("enabled", True)),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers") or ()),
            schedule=tuple(float(s) for s in data.get("schedule") or ()),
            timeout=data.get("timeout"), allow_private=bool(data.get("allow_private")),
            concurrency=int(data.get("concurrency") or 20),
            created_at=float(data.get("created_at") or 0.0),
            disabled_reason=data.get("disabled_reason"), disabled_at=data.get("disabled_at"),
            failing_since=data.get("failing_since"),
        )


def check_types(types: object) -> tuple[str, ...]:
    """``None`` (every type) or a list of type names / ``prefix.*`` / ``*``."""
    if types is None:
        return ()
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, Sequence) or len(types) > MAX_TYPES:
        raise invalid_argument("types", f"a list of at most {MAX_TYPES} type names")
    checked = tuple(check_type(t, field="types") for t in types)
    return tuple(dict.fromkeys(checked))


def check_type(value: object, *, field: str = "type") -> str:
    """A message type name: non-empty text of at most 255 bytes, no whitespace."""
    text = check_text(field, value, max_bytes=255)
    if any(c.isspace() for c in text):
        raise invalid_argument(field, f"{text!r} contains whitespace")
    return text


def check_headers(headers: object) -> tuple[tuple[str, str], ...]:
    """An endpoint's own headers: valid names and values, none of covey's own."""
    if headers is None:
        return ()
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise invalid_argument("headers", f"a mapping of at most {MAX_HEADERS} headers")
    out = []
    for name, value in headers.items():
        if not isinstance(name, str) or not name or not all(
                c.isalnum() or c in "-_" for c in name) or not name.isascii():
            raise invalid_argument("headers", f"{name!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise invalid_argument("headers", f"{name!r} is set by covey")
        if not isinstance(value, str) or len(value) > 4096 or not value.isprintable():
            raise invalid_argument("headers", f"the value of {name!r} is not printable text")
        out.append((name, value))
    return tuple(out)


def check_schedule(schedule: object) -> tuple[float, ...]:
    """Seconds before each retry (0 to MAX_RETRIES of them)."""
    if schedule is None:
        return DEFAULT_SCHEDULE
    if not isinstance(schedule, Sequence) or isinstance(schedule, str) or \
            len(schedule) > MAX_RETRIES:
        raise invalid_argument("schedule", f"a list of at most {MAX_RETRIES} delays (seconds)")
    return tuple(check_seconds("schedule", s) for s in schedule)


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    seconds = check_seconds("timeout", timeout, positive=True)
    if not seconds < math.inf:
        raise invalid_argument("timeout", "must be finite")
    return seconds


def check_concurrency(concurrency: object) -> int:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise invalid_argument("concurrency", f"{concurrency!r} is not an int >= 1")
    return concurrency


def not_found(endpoint_id: object) -> WebhookError:
    return WebhookError(f"no webhook endpoint {endpoint_id!r}",
                        reason=Reason.WEBHOOK_ENDPOINT_NOT_FOUND, endpoint_id=str(endpoint_id))


class EndpointRegistry:
    """The cluster's endpoints, cached in this process (re-read after ``max_age``)."""

    def __init__(self, state: StateStore, monotonic: Callable[[], float], *,
                 max_age: float = 1.0) -> None:
        self._state = state
        self._monotonic = monotonic
        self._max_age = max_age
        self._codec = MsgpackCodec()
        self._cached: dict[str, Endpoint] = {}
        self._version: int | None = None
        self._read_at = -math.inf
        self._reading = asyncio.Lock()

    async def all(self, *, fresh: bool = False) -> Mapping[str, Endpoint]:
        """Every endpoint by id: the cached copy unless it is older than ``max_age``."""
        if fresh or self._monotonic() - self._read_at > self._max_age:
            async with self._reading:
                if fresh or self._monotonic() - self._read_at > self._max_age:
                    await self._read()
        return self._cached

    async def get(self, endpoint_id: str) -> Endpoint | None:
        """One endpoint; an id the cached copy lacks is looked up afresh (it may
        have been added by another process within the last ``max_age``)."""
        found = (await self.all()).get(endpoint_id)
        if found is None:
            found = (await self.all(fresh=True)).get(endpoint_id)
        return found

    async def _read(self) -> None:
        stored = await self._state.get(ENDPOINTS_KEY)
        if stored is None:
            self._cached, self._version = {}, None
        elif stored.version != self._version:
            data: dict[str, Any] = self._codec.decode(stored.value, dict[str, Any])
            self._cached = {k: Endpoint.from_plain(v) for k, v in data.items()}
            self._version = stored.version
        self._read_at = self._monotonic()

    async def change(self, edit: Callable[[dict[str, Endpoint]], T]) -> T:
        """Apply ``edit`` to a fresh copy of every endpoint and store it (compare-and-set).

        ``edit`` may run more than once (when another process changed the
        endpoints meanwhile); what it raises leaves everything unchanged.
        """
        while True:
            await self.all(fresh=True)
            endpoints = dict(self._cached)
            result = edit(endpoints)
            encoded = self._codec.encode({k: v.to_plain() for k, v in endpoints.items()})
            try:
                version = await self._state.set(ENDPOINTS_KEY, encoded,
                                                expected_version=self._version)
            except VersionConflict:
                continue
            self._cached, self._version = endpoints, version
            self._read_at = self._monotonic()
            return result

    async def update(self, endpoint_id: str, **changes: Any) -> Endpoint:
        """Change some fields of one endpoint; ``webhook_endpoint_not_found`` if gone."""
        def edit(endpoints: dict[str, Endpoint]) -> Endpoint:
            current = endpoints.get(endpoint_id)
            if current is None:
                raise not_found(endpoint_id)
            endpoints[endpoint_id] = replace(current, **changes)
            return endpoints[endpoint_id]
        return await self.change(edit)
