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
]
