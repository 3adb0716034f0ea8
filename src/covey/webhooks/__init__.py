"""Layer 4: outgoing webhooks, signed the Standard Webhooks way, and receiving them.

Sending: endpoints are registered in covey's store (``cluster.webhooks``); a
message sent to a type becomes one durable delivery job per endpoint that wants
it (in the application's transaction, or a handler's commit, when given), signed
per attempt, retried on the endpoint's schedule, then dead-lettered. Targets are
checked and pinned (no private, loopback or metadata addresses unless allowed,
no redirects followed).

Receiving: :func:`verify` checks a request's signature and timestamp;
:class:`WebhookReceiver` is an ASGI app that verifies, deduplicates on
``webhook-id`` in a durable table, and runs a handler once per message.
"""

from covey.webhooks._attempts import Attempt
from covey.webhooks._endpoints import Endpoint
from covey.webhooks._receiver import (
    MemoryReceivedStore,
    PostgresReceivedStore,
    ReceivedStore,
    SqliteReceivedStore,
    WebhookReceiver,
)
from covey.webhooks._secrets import WebhookSecret, generate_secret
from covey.webhooks._signing import VerifiedWebhook, sign, verify, webhook_headers
from covey.webhooks._targets import check_url, is_public
from covey.webhooks._webhooks import WebhookDelivery, Webhooks, WebhookSent

__all__ = [
    "Attempt",
    "Endpoint",
    "MemoryReceivedStore",
    "PostgresReceivedStore",
    "ReceivedStore",
    "SqliteReceivedStore",
    "VerifiedWebhook",
    "WebhookDelivery",
    "WebhookReceiver",
    "WebhookSecret",
    "WebhookSent",
    "Webhooks",
    "check_url",
    "generate_secret",
    "is_public",
    "sign",
    "verify",
    "webhook_headers",
]
