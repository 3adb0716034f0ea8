"""``cluster.webhooks``: endpoints, sending, deliveries and the dead-letter."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from covey.core import (
    Clock,
    ClusterError,
    JobError,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
    WebhookError,
    WebhookOptions,
    current_context,
)
from covey.core.runtime import (
    check_seconds,
    check_text,
    invalid_argument,
    to_plain,
    validate_value,
)
from covey.jobs import Jobs, JobStatus
from covey.jobs.runtime import JOB_ENTITY, DeadLetterOwner
from covey.storage import Message, MessageRecord, Storage
from covey.webhooks._attempts import Attempt, attempts_from
from covey.webhooks._endpoints import (
    Endpoint,
    EndpointRegistry,
    SigningKey,
    check_concurrency,
    check_headers,
    check_schedule,
    check_timeout,
    check_type,
    check_types,
    not_found,
)
from covey.webhooks._secrets import WebhookSecret, generate_secret
from covey.webhooks._sender import WEBHOOK_JOB, DeliveryOrder
from covey.webhooks._signing import check_message_id
from covey.webhooks._targets import check_url

DeliveryState = Literal["pending", "sending", "retrying", "delivered", "dead", "cancelled"]
_STATES: dict[str, DeliveryState] = {
    "queued": "pending", "scheduled": "pending", "running": "sending", "failed": "retrying",
    "succeeded": "delivered", "dead": "dead", "cancelled": "cancelled",
}
#: an old secret keeps signing for a day after a rotation, unless told otherwise
DEFAULT_OVERLAP = 86_400.0
_ENDPOINT_ID = re.compile(r"^ep_[0-9]+$")


@dataclass(frozen=True)
class WebhookSent:
    """What ``send`` stored: the message id and one delivery per endpoint.

    Attributes:
        id: the ``webhook-id`` every attempt of every delivery carries.
        deliveries: ``{endpoint id: delivery id}``; empty when no endpoint wants it.
        duplicate: the id was sent before: nothing new was stored.
    """

    id: str
    deliveries: Mapping[str, int]
    duplicate: bool = False


@dataclass(frozen=True)
class WebhookDelivery:
    """One message to one endpoint, and its attempts so far."""

    id: int
    message_id: str
    endpoint_id: str
    type: str
    state: DeliveryState
    attempts: tuple[Attempt, ...]
    created_at: float
    finished_at: float | None
    next_attempt_at: float | None
    tenant: str | None


class Webhooks:
    """The cluster's outgoing webhooks (``cluster.webhooks``)."""

    def __init__(self, registry: EndpointRegistry, jobs: Jobs, storage: Storage,
                 snowflake: SnowflakeGenerator, clock: Clock, options: WebhookOptions,
                 types: Mapping[str, Any] | None = None) -> None:
        self._registry = registry
        self._jobs = jobs
        self._storage = storage
        self._snowflake = snowflake
        self._clock = clock
        self._options = options
        self._types: Mapping[str, Any] = types or {}
        self._codec = MsgpackCodec()
        # `cluster.jobs.retry_dead` / `purge_dead` of a delivery come here, so the
        # record of its attempts is kept on a replay and deleted with it on a purge
        jobs.own_dead_letters(WEBHOOK_JOB, DeadLetterOwner(retry=self.replay,
                                                           purge=self.purge_dead))

    # ---- endpoints -------------------------------------------------------

    async def add_endpoint(
        self, url: str, *, types: Sequence[str] | str | None = None, tenant: str | None = None,
        description: str = "", headers: Mapping[str, str] | None = None,
        secret: str | WebhookSecret | None = None, schedule: Sequence[float] | None = None,
        timeout: float | None = None, allow_private: bool = False, concurrency: int = 20,
        enabled: bool = True,
    ) -> Endpoint:
        """Register an endpoint; returns it (``endpoint.secret`` is for the receiver).

        Args:
            url: ``http://`` or ``https://``; a private or loopback address is
                refused unless ``allow_private`` (or the cluster's
                ``COVEY_WEBHOOKS_ALLOW_PRIVATE``).
            types: what it wants (``invoice.paid``, ``invoice.*``, ``*``); all when omitted.
            tenant: the owner: it receives only messages sent for this tenant.
            secret: a ``whsec_`` secret to use; a new random one when omitted.
            schedule: seconds before each retry; default 5 s, 5 min, 30 min.
            timeout: seconds per attempt (default ``COVEY_WEBHOOKS_TIMEOUT``, 15).
            concurrency: its attempts in flight at once on one runner.

        Raises:
            ClusterError: ``invalid_argument`` naming the field; WebhookError
                ``webhook_target_refused`` for a private address. Nothing is stored.
        """
        if not isinstance(allow_private, bool):
            raise invalid_argument("allow_private", "must be a bool")
        endpoint = Endpoint(
            id=f"ep_{self._snowflake.next_id()}",
            url=check_url(url, allow_private=allow_private or self._options.allow_private),
            keys=(SigningKey(generate_secret() if secret is None
                             else WebhookSecret.parse(secret)),),
            types=check_types(types), tenant=_tenant(tenant),
            description=check_text("description", description, max_bytes=1024, empty=True),
            enabled=_bool("enabled", enabled), headers=check_headers(headers),
            schedule=check_schedule(schedule), timeout=check_timeout(timeout),
            allow_private=allow_private, concurrency=check_concurrency(concurrency),
            created_at=self._clock.now())

        def add(endpoints: dict[str, Endpoint]) -> None:
            endpoints[endpoint.id] = endpoint
        await self._registry.change(add)
        return endpoint

    async def endpoint(self, endpoint_id: str, *, tenant: str | None = None) -> Endpoint:
        """One endpoint (``tenant``: only if that tenant owns it)."""
        endpoint = (await self._registry.all(fresh=True)).get(_endpoint_id(endpoint_id))
        if endpoint is None or (tenant is not None and endpoint.tenant != tenant):
            raise not_found(endpoint_id)
        return endpoint

    async def endpoints(self, *, tenant: str | None = None) -> list[Endpoint]:
        """Every endpoint (of ``tenant``), oldest first."""
        found = (await self._registry.all(fresh=True)).values()
        return sorted((e for e in found if tenant is None or e.tenant == tenant),
                      key=lambda e: (e.created_at, e.id))

    async def disable(self, endpoint_id: str, reason: str = "disabled by an operator") -> Endpoint:
        """Stop sending to it: new messages skip it, pending retries are dead-lettered."""
        return await self._registry.update(
            _endpoint_id(endpoint_id), enabled=False,
            disabled_reason=check_text("reason", reason, max_bytes=1024),
            disabled_at=self._clock.now())

    async def enable(self, endpoint_id: str) -> Endpoint:
        """Send to it again (its failing clock starts over)."""
        return await self._registry.update(_endpoint_id(endpoint_id), enabled=True,
                                           disabled_reason=None, disabled_at=None,
                                           failing_since=None)

    async def rotate_secret(self, endpoint_id: str, *, overlap: float = DEFAULT_OVERLAP,
                            secret: str | WebhookSecret | None = None) -> Endpoint:
        """A new signing secret; the old one keeps signing beside it for ``overlap`` s.

        During the overlap every delivery carries two signatures (new first), so
        a receiver verifies with either secret while it switches.
        """
        endpoint_id = _endpoint_id(endpoint_id)
        overlap = check_seconds("overlap", overlap)
        new = generate_secret() if secret is None else WebhookSecret.parse(secret)
        now = self._clock.now()

        def rotate(endpoints: dict[str, Endpoint]) -> Endpoint:
            current = endpoints.get(endpoint_id)
            if current is None:
                raise not_found(endpoint_id)
            kept = tuple(replace(k, expires_at=min(k.expires_at or now + overlap, now + overlap))
                         for k in current.keys if k.expires_at is None or k.expires_at > now)
            endpoints[endpoint_id] = replace(current, keys=(SigningKey(new), *kept))
            return endpoints[endpoint_id]
        return await self._registry.change(rotate)

    async def delete(self, endpoint_id: str) -> None:
        """Remove it; its pending deliveries end in the dead-letter (``endpoint_deleted``)."""
        endpoint_id = _endpoint_id(endpoint_id)

        def remove(endpoints: dict[str, Endpoint]) -> None:
            if endpoints.pop(endpoint_id, None) is None:
                raise not_found(endpoint_id)
        await self._registry.change(remove)

    # ---- sending ---------------------------------------------------------

    async def send(self, target: str, payload: Any, *, type: str | None = None,
                   id: str | None = None, tenant: str | None = None,
                   transaction: Any = None) -> WebhookSent:
        """Send a message to the endpoints that want it, or to one endpoint.

        Args:
            target: a message type (``invoice.paid``): every enabled endpoint of the
                tenant whose ``types`` match gets it; or an endpoint id (``ep_…``):
                that endpoint only (then ``type`` names the message type).
            payload: a pydantic model or JSON data; the body is
                ``{"type": …, "timestamp": …, "data": payload}``.
            id: the ``webhook-id`` (``msg_…`` by default); sending the same id to
                the same endpoint again stores nothing (idempotent).
            tenant: whose message it is (default: the request context's tenant).
            transaction: ``self.ctx`` of a persisted handler (sent with its commit),
                or an asyncpg connection in the application's transaction (sent
                only if it commits).

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]``) or
                SerializationError for a payload that does not validate;
                WebhookError ``webhook_endpoint_not_found`` for an unknown
                endpoint id. Nothing is stored then.
        """
        message_id = f"msg_{self._snowflake.next_id()}" if id is None else check_message_id(id)
        tenant = _tenant(tenant) if tenant is not None else current_context().tenant_id
        if isinstance(target, str) and _ENDPOINT_ID.match(target):
            endpoint = await self.endpoint(target)
            message_type = check_type(type or "message")
            chosen = [endpoint] if endpoint.enabled else []
        else:
            message_type = check_type(target, field="target")
            if type is not None and type != message_type:
                raise invalid_argument("type", "give the type as the target, or an endpoint id")
            chosen = [e for e in (await self._registry.all()).values()
                      if e.wants(message_type, tenant)]
        body = self._body(message_type, payload)
        orders = [self._jobs.message(
            WEBHOOK_JOB, DeliveryOrder(message_id=message_id, endpoint_id=e.id,
                                       type=message_type, body=body),
            dedupe_key=f"{e.id}:{message_id}", delay=None, priority=None) for e in chosen]
        # a burst of sends (a web tier's requests) shares one wake frame per owner
        handles = await self._jobs.enqueue(orders, transaction=transaction, coalesce=True)
        return WebhookSent(message_id, {e.id: h.id for e, h in zip(chosen, handles, strict=True)},
                           duplicate=bool(handles) and all(h.duplicate for h in handles))

    def _body(self, message_type: str, payload: Any) -> str:
        model = self._types.get(message_type)
        data = validate_value(payload, model) if model is not None else to_plain(payload)
        if model is not None:
            data = to_plain(data)
        stamp = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        try:
            return json.dumps({"type": message_type,
                               "timestamp": stamp.isoformat().replace("+00:00", "Z"),
                               "data": data}, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise invalid_argument("payload", f"not JSON data: {exc}") from exc

    # ---- deliveries ------------------------------------------------------

    async def delivery(self, delivery_id: int) -> WebhookDelivery:
        """One delivery with every attempt so far."""
        record = await self._record(delivery_id)
        return await self._delivery(record)

    async def deliveries(self, *, endpoint: str | None = None, state: str | None = None,
                         limit: int = 50) -> list[WebhookDelivery]:
        """Recent deliveries, newest first (``state``: unprocessed, processed or error)."""
        found: list[WebhookDelivery] = []
        async for record in self._records(state=state, endpoint=endpoint):
            found.append(await self._delivery(record))
            if len(found) >= limit:
                break
        return found

    async def dead_letters(self, *, endpoint: str | None = None, since: float | None = None,
                           until: float | None = None, limit: int = 100) -> list[WebhookDelivery]:
        """Dead deliveries, newest first (``since``/``until``: when they were sent)."""
        found: list[WebhookDelivery] = []
        async for record in self._records(state="error", endpoint=endpoint):
            if _in_range(record, since, until):
                found.append(await self._delivery(record))
                if len(found) >= limit:
                    break
        return found

    async def replay(self, delivery_id: int) -> WebhookDelivery:
        """Send a dead delivery again (same ``webhook-id``, a fresh schedule).

        Its attempts so far are kept: the new ones follow them.
        """
        record = await self._record(delivery_id)
        if record.reply is None or not record.reply.is_error:
            raise invalid_argument("delivery_id", f"delivery {delivery_id} is not dead")
        await self._replay(await self._delivery(record))
        return await self.delivery(delivery_id)

    async def replay_dead(self, *, endpoint: str | None = None, since: float | None = None,
                          until: float | None = None) -> int:
        """Replay every dead delivery (of ``endpoint``, sent in the range); how many."""
        dead = await self.dead_letters(endpoint=endpoint, since=since, until=until,
                                       limit=100_000)
        for delivery in dead:
            await self._replay(delivery)
        return len(dead)

    async def _replay(self, delivery: WebhookDelivery) -> None:
        # the job starts over (its attempts reset): the record of the earlier ones
        # is kept beside it first
        key = history_key(delivery.id)
        stored = await self._storage.state.get(key)
        plain = [a.to_json() for a in delivery.attempts]
        value = self._codec.encode(plain)
        await self._storage.state.set(key, value,
                                      expected_version=None if stored is None else stored.version)
        await self._jobs.requeue_dead(delivery.id)

    async def purge_dead(self, *, endpoint: str | None = None, since: float | None = None,
                         until: float | None = None) -> int:
        """Delete dead deliveries (of ``endpoint``, sent in the range); how many."""
        ids = [d.id for d in await self.dead_letters(endpoint=endpoint, since=since,
                                                      until=until, limit=100_000)]
        for delivery_id in ids:
            await self._storage.state.delete(history_key(delivery_id))
        return await self._storage.messages.delete(ids) if ids else 0

    async def _record(self, delivery_id: int) -> MessageRecord:
        if not isinstance(delivery_id, int) or isinstance(delivery_id, bool):
            raise invalid_argument("delivery_id", f"{delivery_id!r} is not an int")
        records = await self._storage.messages.inspect([delivery_id]) if delivery_id > 0 else {}
        record = records.get(delivery_id)
        if record is None or record.message.tag != WEBHOOK_JOB or \
                record.message.address.entity_type != JOB_ENTITY:
            raise WebhookError(f"no webhook delivery {delivery_id}",
                               reason=Reason.WEBHOOK_DELIVERY_NOT_FOUND, delivery_id=delivery_id)
        return record

    async def _records(self, *, state: str | None, endpoint: str | None) -> Any:
        prefix = f"{WEBHOOK_JOB}:{_endpoint_id(endpoint)}:" if endpoint is not None else None
        before: int | None = None
        while True:
            page = await self._storage.messages.list_messages(
                JOB_ENTITY, state=state, tag=WEBHOOK_JOB, limit=500,  # type: ignore[arg-type]
                before_id=before)
            for record in page:
                if prefix is None or record.message.address.entity_id.startswith(prefix):
                    yield record
            if len(page) < 500:
                return
            before = page[-1].message.id

    async def _delivery(self, record: MessageRecord) -> WebhookDelivery:
        message = record.message
        order = self._order(message)
        try:
            status = await self._jobs.status(message.id)
        except JobError:  # purged meanwhile
            raise WebhookError(f"no webhook delivery {message.id}",
                               reason=Reason.WEBHOOK_DELIVERY_NOT_FOUND,
                               delivery_id=message.id) from None
        earlier: tuple[Attempt, ...] = ()
        stored = await self._storage.state.get(history_key(message.id))
        if stored is not None:  # replayed: the attempts before the replay come first
            plain: list[str] = self._codec.decode(stored.value, list[str])
            earlier = tuple(Attempt.from_json(a, n + 1) for n, a in enumerate(plain))
        return _delivery_of(status, order, earlier)

    def _order(self, message: Message) -> DeliveryOrder:
        try:
            return DeliveryOrder.model_validate(self._codec.decode(message.payload, dict))
        except (ClusterError, ValueError):
            return DeliveryOrder(message_id="?", endpoint_id="?", type="?", body="")


def history_key(delivery_id: int) -> str:
    """Where the attempts of a replayed delivery, before its replay, are kept."""
    return f"covey.webhook-history/{delivery_id}"


def _delivery_of(status: JobStatus, order: DeliveryOrder,
                 earlier: tuple[Attempt, ...] = ()) -> WebhookDelivery:
    latest = attempts_from(status.errors, status.result if status.state == "succeeded" else None)
    attempts = earlier + tuple(replace(a, number=len(earlier) + i + 1)
                               for i, a in enumerate(latest))
    pending = status.state in ("queued", "scheduled", "failed")
    return WebhookDelivery(status.id, order.message_id, order.endpoint_id, order.type,
                           _STATES[status.state], attempts, status.created_at, status.finished_at,
                           status.scheduled_for if pending else None, status.tenant)


def _in_range(record: MessageRecord, since: float | None, until: float | None) -> bool:
    return (since is None or record.created_at >= since) and \
        (until is None or record.created_at <= until)


def _endpoint_id(value: object) -> str:
    if not isinstance(value, str) or not _ENDPOINT_ID.match(value):
        raise not_found(value)
    return value


def _tenant(tenant: object) -> str | None:
    if tenant is None:
        return None
    return check_text("tenant", tenant, max_bytes=255)


def _bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise invalid_argument(field, "must be a bool")
    return value
