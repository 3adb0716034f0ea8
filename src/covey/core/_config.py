"""Configuration: frozen dataclasses with safe defaults and an environment form.

Every setting has a default and a ``COVEY_*`` variable. Top-level fields map to
``COVEY_<FIELD>`` (``COVEY_DATABASE_URL``, ``COVEY_SHARDS``); fields of a nested
option group map to ``COVEY_<GROUP>_<FIELD>`` (``COVEY_STORAGE_BATCH_MAX_SIZE``).
Durations are seconds (floats allowed). A malformed value is a
:class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from covey.core._errors import ConfigError
from covey.core._logs import LogOptions

DEFAULT_DATABASE_URL = "sqlite:///covey.db"


@dataclass(frozen=True)
class StorageOptions:
    """How covey talks to its database.

    Attributes:
        schema: PostgreSQL schema holding covey's tables; two clusters can share
            one database by using two schemas (advisory-lock keys derive from it).
        pool_size: connections in the PostgreSQL pool (the shard-lock connection
            comes on top).
        batch_max_size: the most writes one group-commit transaction takes.
        batch_max_wait: how long a flush waits for more writes to join it. 0 batches
            only what queued while the previous transaction ran (no added latency).
        batch_flushers: group-commit transactions in flight at once.
        lock_timeout: the bound on each shard-lock operation; a lock connection that
            takes longer is treated as lost.
        shard_lease: how long a SQLite/memory shard lease lasts without refresh.
        message_lease: how long a message read from storage is reserved for the
            reader before another read may hand it out again.
        retention: how long processed messages are kept before purge (0: purge
            at the next interval; ``inf``: never). Dead-lettered jobs are kept
            until an operator retries or purges them.
        connect_timeout: the bound on opening a database connection.
        purge_interval: how often one runner purges processed messages older
            than ``retention``.
        purge_batch: the most rows one purge statement deletes; a pass repeats
            batches until one comes back short.
        event_retention: how long events stay in the event log (seconds; ``inf``:
            never purged by age). An event a subscriber group has not passed yet
            is kept whatever its age.
        event_max_count: the most events the log keeps (0: no limit): the oldest
            beyond it are purged, again only once every group has passed them
            (a lagging group keeps them; the purge logs the lag that holds them).
    """

    schema: str = "covey"
    pool_size: int = 10
    batch_max_size: int = 512
    batch_max_wait: float = 0.0
    batch_flushers: int = 2
    lock_timeout: float = 5.0
    shard_lease: float = 30.0
    message_lease: float = 30.0
    retention: float = 7 * 24 * 3600.0
    connect_timeout: float = 10.0
    purge_interval: float = 60.0
    purge_batch: int = 1000
    event_retention: float = 7 * 24 * 3600.0
    event_max_count: int = 0


@dataclass(frozen=True)
class TransportOptions:
    """The runner-to-runner transport.

    Attributes:
        max_frame_bytes: the largest frame accepted or sent; a bigger one is
            refused with ``frame_too_large``.
        heartbeat_interval: an idle connection is pinged this often.
        heartbeat_timeout: a connection with no answer to a ping for this long
            is dropped and its peer reported lost.
        connect_timeout: the bound on connecting and authenticating.
        reconnect_backoff_max: the longest wait between reconnect attempts.
        tls_cert: PEM certificate (with ``tls_key``) to serve TLS; empty: plain TCP.
        tls_key: PEM private key for ``tls_cert``.
        tls_ca: PEM CA bundle to verify peers with; required with TLS.
    """

    max_frame_bytes: int = 16 * 1024 * 1024
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    connect_timeout: float = 5.0
    reconnect_backoff_max: float = 2.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""


@dataclass(frozen=True)
class ShardingOptions:
    """How runners find each other, share shards and deliver messages.

    Attributes:
        heartbeat_interval: how often a runner records that it is alive.
        runner_ttl: a runner silent this long is considered gone.
        membership_interval: how often the live runner set is re-read (a dead
            PostgreSQL lock session shows there at once, so this bounds failover).
        lock_refresh_interval: how often held shards are re-verified.
        acquire_retry_interval: how often a runner retries shards assigned to it
            that another runner still holds.
        poll_interval: the storage safety poll for persisted messages whose
            wake-up was lost.
        poll_batch: the most messages one storage read takes.
        shutdown_grace: how long in-flight handlers get to finish when shards
            move or the runner stops.
        call_timeout: the default deadline of an entity call.
        processed_cache: how many recently completed message ids a runner
            remembers to answer repeated deliveries without storage.
    """

    heartbeat_interval: float = 1.0
    runner_ttl: float = 6.0
    membership_interval: float = 0.25
    lock_refresh_interval: float = 2.0
    acquire_retry_interval: float = 0.1
    poll_interval: float = 5.0
    poll_batch: int = 512
    shutdown_grace: float = 15.0
    call_timeout: float = 30.0
    processed_cache: int = 100_000


@dataclass(frozen=True)
class HealthOptions:
    """The background health checks behind ``cluster.health`` (:mod:`covey.health`).

    Attributes:
        interval: how often every check runs (in the background, never per request).
        timeout: the default bound on one run of a check; a slower one has failed.
        failures: consecutive failed runs of a critical check that make the
            runner unready (one passing run makes it ready again).
        lag_limit: event-loop lag, in seconds, that counts as a lagging check.
        lag_checks: consecutive lagging checks that fail liveness.
        stall_factor: an idle runner loop that has not ticked for this many of its
            intervals (and at least one ``interval``) fails liveness.
        window: the span, in seconds, of the latency percentile in the report.
    """

    interval: float = 2.0
    timeout: float = 1.0
    failures: int = 2
    lag_limit: float = 5.0
    lag_checks: int = 3
    stall_factor: float = 3.0
    window: float = 60.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "lag_limit", "stall_factor", "window"):
            value = getattr(self, name)
            if not 0 < value < math.inf:  # NaN fails too
                raise ConfigError(f"health.{name} (COVEY_HEALTH_{name.upper()}) must be a "
                                  f"number > 0, got {value!r}", setting=f"health.{name}")
        for name in ("failures", "lag_checks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"health.{name} (COVEY_HEALTH_{name.upper()}) must be at "
                                  f"least 1, got {getattr(self, name)!r}",
                                  setting=f"health.{name}")


@dataclass(frozen=True)
class WebhookOptions:
    """Outgoing webhooks (:mod:`covey.webhooks`), for every endpoint of the cluster.

    Attributes:
        allow_private: deliver to loopback, private and link-local addresses too
            (local development and tests). Off: such targets are refused.
        concurrency: webhook deliveries in flight at once on one runner, all
            endpoints together (each endpoint also has its own limit).
        timeout: the default per-attempt timeout of an endpoint, in seconds.
        disable_after: an endpoint whose deliveries have failed continuously for
            this many seconds is disabled (and reported); 0 never disables.
        breaker_failures: consecutive failed attempts to an endpoint (on one
            runner) that open its circuit breaker.
        breaker_cooldown: seconds an open breaker fails attempts at once, before
            one trial attempt may go through.
    """

    allow_private: bool = False
    concurrency: int = 1000
    timeout: float = 15.0
    disable_after: float = 5 * 24 * 3600.0
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0

    def __post_init__(self) -> None:
        for name in ("timeout", "breaker_cooldown"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"webhooks.{name} (COVEY_WEBHOOKS_{name.upper()}) must be a "
                                  f"number > 0, got {value!r}", setting=f"webhooks.{name}")
        if not 0 <= self.disable_after < math.inf:
            raise ConfigError("webhooks.disable_after (COVEY_WEBHOOKS_DISABLE_AFTER) must be a "
                              f"number >= 0, got {self.disable_after!r}",
                              setting="webhooks.disable_after")
        for name in ("concurrency", "breaker_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"webhooks.{name} (COVEY_WEBHOOKS_{name.upper()}) must be at "
                                  f"least 1, got {getattr(self, name)!r}",
                                  setting=f"webhooks.{name}")


@dataclass(frozen=True)
class RealtimeOptions:
    """Streams, SSE, WebSocket connections and per-user routing (:mod:`covey.realtime`).

    Attributes:
        stream_keep: items kept per stream (older ones are trimmed); a client whose
            cursor fell behind them gets ``event: reset``.
        stream_retention: seconds items are kept; a stream idle this long is dropped
            (its next item starts a new epoch).
        max_item_bytes: the largest encoded stream item or user message.
        buffer_items: items a subscriber (one SSE client, one WebSocket) may have
            waiting; one more closes it (it resumes from its last id).
        buffer_bytes: the same bound in bytes.
        heartbeat: seconds of silence after which an SSE stream gets a comment.
        send_timeout: seconds a write to a client may take; a frozen client is
            released after it.
        route_ttl: seconds a pod's subscriptions and user connections stay
            routable without renewal (a dead pod's expire after it).
        poll_interval: seconds between the safety re-reads of the streams a pod
            serves (a lost push is delivered after at most this long).
        mail_ttl: default seconds a message for an offline user is kept.
        sync_publish: PostgreSQL: wait for the WAL flush when publishing an item
            on its own (not in a transaction). Off (the default): an item is
            visible at once and kept through any crash of covey's processes; a
            crash of the PostgreSQL server itself may lose the last moments of
            items (subscribers past the head then get a reset). The flush costs
            a few milliseconds per publish on most disks.
    """

    stream_keep: int = 10_000
    stream_retention: float = 86_400.0
    max_item_bytes: int = 262_144
    buffer_items: int = 1000
    buffer_bytes: int = 1_048_576
    heartbeat: float = 30.0
    send_timeout: float = 5.0
    route_ttl: float = 15.0
    poll_interval: float = 1.0
    mail_ttl: float = 86_400.0
    sync_publish: bool = False

    def __post_init__(self) -> None:
        for name in ("stream_retention", "heartbeat", "send_timeout", "route_ttl",
                     "poll_interval", "mail_ttl"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"realtime.{name} (COVEY_REALTIME_{name.upper()}) must be a "
                                  f"number > 0, got {value!r}", setting=f"realtime.{name}")
        for name in ("stream_keep", "max_item_bytes", "buffer_items", "buffer_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"realtime.{name} (COVEY_REALTIME_{name.upper()}) must be at "
                                  f"least 1, got {getattr(self, name)!r}",
                                  setting=f"realtime.{name}")


@dataclass(frozen=True)
class CoveyConfig:
    """Settings of one covey process.

    Attributes:
        database_url: ``sqlite:///path.db``, ``postgresql://…`` or ``memory://``.
        shards: shards per shard group; recorded on first start and checked after.
        runner_host: the address peers use to reach this runner (the pod IP in
            Kubernetes).
        runner_port: the transport port; 0 picks a free one.
        cluster_secret: shared secret authenticating runner-to-runner connections.
        client_only: host nothing, only route calls (the web pods of a deployment
            with separate worker pods); the same as ``Cluster(client_only=True)``.
        drain_delay: seconds a web pod keeps serving after SIGTERM before its
            server shuts down (``covey.asgi``; match the Kubernetes preStop sleep).
        storage: database options.
        transport: runner-to-runner transport options.
        sharding: membership, ownership and delivery options.
        health: the background health checks and probes.
        webhooks: outgoing webhooks (targets allowed, concurrency, breaker).
        realtime: streams, SSE, WebSocket and per-user routing.
        log: logging set up at start (``COVEY_LOG_LEVEL``, ``COVEY_LOG_FORMAT``).
    """

    database_url: str = DEFAULT_DATABASE_URL
    shards: int = 300
    runner_host: str = "127.0.0.1"
    runner_port: int = 0
    cluster_secret: str | None = None
    client_only: bool = False
    drain_delay: float = 5.0
    storage: StorageOptions = field(default_factory=StorageOptions)
    transport: TransportOptions = field(default_factory=TransportOptions)
    sharding: ShardingOptions = field(default_factory=ShardingOptions)
    health: HealthOptions = field(default_factory=HealthOptions)
    webhooks: WebhookOptions = field(default_factory=WebhookOptions)
    realtime: RealtimeOptions = field(default_factory=RealtimeOptions)
    log: LogOptions = field(default_factory=LogOptions)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"shards must be at least 1, got {self.shards}", setting="shards")
        if not 0 <= self.runner_port < 65536:
            raise ConfigError(f"runner_port out of range: {self.runner_port}",
                              setting="runner_port")
        if self.storage.batch_max_size < 1 or self.storage.batch_flushers < 1:
            raise ConfigError("storage batch_max_size and batch_flushers must be >= 1",
                              setting="storage")
        if not self.storage.schema.isidentifier():
            raise ConfigError(f"storage schema must be an identifier: {self.storage.schema!r}",
                              setting="storage.schema")
        _check_retention(self.storage)
        if not 0 <= self.drain_delay < math.inf:  # NaN fails too
            raise ConfigError(f"drain_delay (COVEY_DRAIN_DELAY) must be a number of seconds "
                              f">= 0, got {self.drain_delay!r}", setting="drain_delay")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CoveyConfig:
        """Build a configuration from ``COVEY_*`` variables; ``overrides`` win."""
        env = os.environ if environ is None else environ
        values = _read(cls, "COVEY_", env)
        values.update(overrides)
        return cls(**values)

    @staticmethod
    def variables() -> dict[str, str]:
        """Every environment variable covey reads, with its default (for docs)."""
        out: dict[str, str] = {}
        _describe(CoveyConfig, "COVEY_", out)
        return out


def _check_retention(options: StorageOptions) -> None:
    """Refuse retention settings that would purge wrongly or spin."""
    bad: tuple[str, str, object] | None = None
    if not options.retention >= 0:  # NaN fails too
        bad = ("retention", "a number of seconds >= 0 (inf: keep forever)", options.retention)
    elif not 0 < options.purge_interval < math.inf:
        bad = ("purge_interval", "a number of seconds > 0", options.purge_interval)
    elif options.purge_batch < 1:
        bad = ("purge_batch", "at least 1", options.purge_batch)
    elif not options.event_retention >= 0:
        bad = ("event_retention", "a number of seconds >= 0 (inf: keep forever)",
               options.event_retention)
    elif options.event_max_count < 0:
        bad = ("event_max_count", "0 (no limit) or more", options.event_max_count)
    if bad is not None:
        name, wanted, value = bad
        raise ConfigError(f"storage.{name} (COVEY_STORAGE_{name.upper()}) must be {wanted}, "
                          f"got {value!r}", setting=f"storage.{name}")


def _read(cls: type[Any], prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[f.name] = tp(**_read(tp, f"{prefix}{f.name.upper()}_", env))
            continue
        name = f"{prefix}{f.name.upper()}"
        if name in env:
            values[f.name] = _convert(name, env[name], tp)
    return values


def _describe(cls: type[Any], prefix: str, out: dict[str, str]) -> None:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _describe(tp, f"{prefix}{f.name.upper()}_", out)
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out[f"{prefix}{f.name.upper()}"] = "" if default is None else str(default)


def _convert(name: str, raw: str, tp: Any) -> Any:
    optional = get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)
    if optional:
        if raw == "":
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {tp.__name__}: {exc}",
                          setting=name) from exc
