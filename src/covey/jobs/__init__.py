"""Layer 3: durable background jobs — pushed, prioritized, retried, cancellable.

A job is a persisted message to the ``covey.Job`` entity type: it spreads across
runners by shard, starts as soon as it is stored (pushed to its owner, no polling
loop), survives runner death, and keeps its id across retries.
"""

from covey.jobs._declared import JobDefinition
from covey.jobs._definition import (
    Backoff,
    JobSpec,
    JobStatus,
    Retry,
    exponential,
    priority_value,
)
from covey.jobs._jobs import JobHandle, Jobs
from covey.jobs._runner import JobContext, JobRunner, PrioritySemaphore

__all__ = [
    "Backoff",
    "JobContext",
    "JobDefinition",
    "JobHandle",
    "JobRunner",
    "JobSpec",
    "JobStatus",
    "Jobs",
    "PrioritySemaphore",
    "Retry",
    "exponential",
    "priority_value",
]
