"""What covey's assembly wires to deliver webhooks; not for applications.

``covey.cluster`` builds one :class:`EndpointRegistry` and :class:`WebhookSender`
per member, declares the sender's job (:data:`WEBHOOK_JOB`) beside the
application's jobs, and hands both to :class:`~covey.webhooks.Webhooks`.
"""

from covey.webhooks._endpoints import ENDPOINTS_KEY, EndpointRegistry, check_type
from covey.webhooks._sender import WEBHOOK_JOB, DeliveryOrder, Gate, WebhookSender, retry_after

__all__ = [
    "DeliveryOrder",
    "ENDPOINTS_KEY",
    "EndpointRegistry",
    "Gate",
    "WEBHOOK_JOB",
    "WebhookSender",
    "check_type",
    "retry_after",
]
