"""Every metric covey exports, in one place (Prometheus, via prometheus-client).

Names start with ``covey_``. Later layers add theirs here too, so operators find
the whole list in one file.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENTITIES_ACTIVE = Gauge(
    "covey_entities_active", "Live entity instances on this runner", ["entity_type"]
)
SHARDS_OWNED = Gauge("covey_shards_owned", "Shards this runner holds")
RUNNERS_LIVE = Gauge("covey_runners_live", "Runners this process sees as live")
MESSAGES_HANDLED = Counter(
    "covey_messages_handled_total", "Entity requests handled on this runner",
    ["entity_type", "kind"],
)
MESSAGES_FAILED = Counter(
    "covey_messages_failed_total", "Entity requests whose handler raised",
    ["entity_type", "kind"],
)
HANDLER_SECONDS = Histogram(
    "covey_handler_seconds", "Entity handler run time",
    ["entity_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FENCED_TOTAL = Counter(
    "covey_fenced_total", "Shards dropped because a lock was lost or a write was fenced out"
)
TRANSPORT_REJECTED = Counter(
    "covey_transport_rejected_total", "Runner transport connections and frames refused "
    "(auth_failed, malformed, frame_too_large, handshake_timeout)", ["reason"],
)
WAKEUP_LISTENER_UP = Gauge(
    "covey_wakeup_listener_up",
    "1 while this runner's PostgreSQL LISTEN connection (commit wake-ups) is up, else 0",
)
MESSAGES_PURGED = Counter(
    "covey_messages_purged_total",
    "Processed messages deleted after the retention (counted by the runner that purged)",
)

SINGLETON_LAST_BEAT = Gauge(
    "covey_singleton_last_beat_timestamp_seconds",
    "When a singleton last called ctx.beat() (Unix seconds)", ["name"],
)
CRON_TICKS = Counter(
    "covey_cron_ticks_total", "Cron ticks by outcome (run, skipped, failed)", ["name", "outcome"]
)
CRON_LATENESS = Histogram(
    "covey_cron_lateness_seconds", "Start time of a cron run minus its scheduled instant",
    ["name"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

JOBS_BACKLOG = Gauge(
    "covey_jobs_backlog", "Stored jobs not finished yet (queued, scheduled, retrying), "
    "cluster-wide; exported by one runner", ["name", "priority"],
)
JOBS_DEAD_LETTER = Gauge(
    "covey_jobs_dead_letter", "Dead jobs in the dead-letter, cluster-wide; exported by one "
    "runner", ["name"],
)
JOBS_RUNNING = Gauge("covey_jobs_running", "Jobs running on this runner", ["name"])
JOBS_QUEUED = Gauge(
    "covey_jobs_queued", "Jobs delivered to this runner waiting for a slot", ["name", "priority"]
)
JOBS_SUCCEEDED = Counter("covey_jobs_succeeded_total", "Job runs that succeeded", ["name"])
JOBS_FAILED = Counter("covey_jobs_failed_total", "Job runs that raised or timed out", ["name"])
JOBS_DEAD = Counter("covey_jobs_dead_total", "Jobs dead-lettered", ["name"])
JOB_SECONDS = Histogram(
    "covey_job_seconds", "Job handler run time", ["name"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
)

EVENTS_PUBLISHED = Counter(
    "covey_events_published_total", "Events published (stored in the log), by topic", ["topic"]
)
EVENTS_HANDLED = Counter(
    "covey_events_handled_total", "Event handler runs by group and outcome (done: handled; "
    "retried: failed, runs again; dead: failed for the last time, dead-lettered)",
    ["group", "outcome"],
)
EVENT_GROUP_LAG = Gauge(
    "covey_event_group_lag", "Events of a group not handled yet (deliveries pending plus "
    "events not fanned out), cluster-wide; exported by the events singleton", ["group"],
)
EVENT_GROUP_LAG_SECONDS = Gauge(
    "covey_event_group_lag_seconds", "Age of a group's oldest pending delivery (seconds), "
    "cluster-wide; exported by the events singleton", ["group"],
)
EVENT_DEAD_LETTERS = Gauge(
    "covey_event_dead_letters", "Events in a group's dead-letter, cluster-wide; exported by "
    "the events singleton", ["group"],
)

WORKFLOWS_STARTED = Counter(
    "covey_workflows_started_total", "Workflow executions that began their first run",
    ["workflow"],
)
WORKFLOWS_ENDED = Counter(
    "covey_workflows_completed_total",
    "Workflow executions that ended, by final state (completed, compensated, failed, "
    "cancelled, failed_nondeterministic)", ["workflow", "state"],
)
WORKFLOWS_RUNNING = Gauge(
    "covey_workflows_running", "Workflow executions running on this runner now", ["workflow"],
)
WORKFLOW_STEP_SECONDS = Histogram(
    "covey_workflow_step_seconds", "Seconds a workflow step ran (every attempt)", ["workflow"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_ATTEMPTS = Counter(
    "covey_webhook_attempts_total",
    "Webhook delivery attempts by endpoint and outcome (delivered, http_error, timeout, "
    "network_error, refused, circuit_open)", ["endpoint", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "covey_webhook_attempt_seconds", "Seconds from request to response of a webhook attempt",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_DEAD = Counter(
    "covey_webhook_dead_total", "Webhook deliveries sent to the dead-letter", ["endpoint"],
)
WEBHOOK_DEAD_LETTER = Gauge(
    "covey_webhook_dead_letter", "Webhook deliveries in the dead-letter (cluster-wide, sampled "
    "by one runner)",
)
WEBHOOK_ENDPOINTS_DISABLED = Gauge(
    "covey_webhook_endpoints_disabled", "Webhook endpoints that are disabled (cluster-wide)",
)
REALTIME_CONNECTIONS = Gauge(
    "covey_realtime_connections", "Open real-time connections on this pod by kind (sse, websocket)",
    ["kind"],
)
REALTIME_ITEMS_SENT = Counter(
    "covey_realtime_items_sent_total", "Stream items and messages written to real-time clients "
    "by kind (sse, websocket)", ["kind"],
)
REALTIME_OVERFLOWS = Counter(
    "covey_realtime_buffer_overflows_total", "Real-time clients closed because their bounded "
    "buffer overflowed (they resume from their last id)", ["kind"],
)
REALTIME_SLOW_DISCONNECTS = Counter(
    "covey_realtime_slow_disconnects_total", "Real-time clients released because a write did not "
    "complete within the send timeout (frozen or half-open clients)", ["kind"],
)
REALTIME_RECONNECTS = Counter(
    "covey_realtime_reconnects_total", "Real-time clients that came back with a cursor (a resume) "
    "by kind", ["kind"],
)
REALTIME_PUBLISHED = Counter(
    "covey_stream_items_published_total", "Stream items published from this process",
)
REALTIME_USER_MESSAGES = Counter(
    "covey_user_messages_total", "send_to_user results by outcome (delivered, stored, dropped)",
    ["outcome"],
)

__all__ = [
    "JOBS_BACKLOG",
    "JOBS_DEAD",
    "JOBS_DEAD_LETTER",
    "JOBS_FAILED",
    "JOBS_QUEUED",
    "JOBS_RUNNING",
    "JOBS_SUCCEEDED",
    "JOB_SECONDS",
    "CRON_LATENESS",
    "CRON_TICKS",
    "ENTITIES_ACTIVE",
    "EVENTS_HANDLED",
    "EVENTS_PUBLISHED",
    "EVENT_DEAD_LETTERS",
    "EVENT_GROUP_LAG",
    "EVENT_GROUP_LAG_SECONDS",
    "FENCED_TOTAL",
    "HANDLER_SECONDS",
    "MESSAGES_FAILED",
    "MESSAGES_HANDLED",
    "MESSAGES_PURGED",
    "RUNNERS_LIVE",
    "SHARDS_OWNED",
    "SINGLETON_LAST_BEAT",
    "TRANSPORT_REJECTED",
    "WAKEUP_LISTENER_UP",
    "REALTIME_CONNECTIONS",
    "REALTIME_ITEMS_SENT",
    "REALTIME_OVERFLOWS",
    "REALTIME_PUBLISHED",
    "REALTIME_RECONNECTS",
    "REALTIME_SLOW_DISCONNECTS",
    "REALTIME_USER_MESSAGES",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_DEAD",
    "WEBHOOK_DEAD_LETTER",
    "WEBHOOK_ENDPOINTS_DISABLED",
    "WEBHOOK_SECONDS",
    "WORKFLOWS_ENDED",
    "WORKFLOWS_RUNNING",
    "WORKFLOWS_STARTED",
    "WORKFLOW_STEP_SECONDS",
]
