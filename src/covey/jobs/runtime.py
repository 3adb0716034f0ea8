"""What covey's assembly wires to run jobs; not for applications.

``covey.cluster`` builds a :class:`JobRunner` per runner with a
:class:`RunnerJobHost`, registers it as the deliverer of :data:`JOB_ENTITY`, and
has one runner sample the cluster-wide job gauges (:func:`sample_job_metrics`,
as the singleton :data:`JOBS_METRICS`). An application declares jobs with
``@cluster.job`` and uses :mod:`covey.jobs`; nothing here is stable API.
"""

from covey.jobs._definition import JOB_ENTITY, JobSpec, job_spec, priority_value
from covey.jobs._host import JobHost, RunnerJobHost
from covey.jobs._jobs import DeadLetterOwner, progress_key
from covey.jobs._metrics import JOBS_METRICS, sample_job_metrics
from covey.jobs._runner import JobRunner, PrioritySemaphore, error_history

__all__ = [
    "DeadLetterOwner",
    "JOBS_METRICS",
    "JOB_ENTITY",
    "JobHost",
    "JobRunner",
    "JobSpec",
    "PrioritySemaphore",
    "RunnerJobHost",
    "error_history",
    "job_spec",
    "priority_value",
    "progress_key",
    "sample_job_metrics",
]
