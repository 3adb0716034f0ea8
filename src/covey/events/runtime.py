"""What covey's assembly wires to run domain events; not for applications.

``covey.cluster`` builds one :class:`EventPublisher` per member, an
:class:`EventRunner` per runner (the deliverer of ``covey.Event`` messages,
registered in the messenger's delivery registry), and declares the
:data:`EVENTS_SINGLETON` whose owner runs :class:`EventFanout`. An application
uses :mod:`covey.events`; nothing here is stable API.
"""

from covey.events._event import EventVersionUnknown, decode_event, encode_event
from covey.events._fanout import DEFAULT_RETENTION, EVENTS_SINGLETON, EventFanout
from covey.events._publisher import EventPublisher, delivery
from covey.events._runner import EventRunner, ShardFences
from covey.events._subscription import RetryPolicy, Subscription, subscriptions

__all__ = [
    "DEFAULT_RETENTION",
    "EVENTS_SINGLETON",
    "EventFanout",
    "EventPublisher",
    "EventRunner",
    "EventVersionUnknown",
    "RetryPolicy",
    "ShardFences",
    "Subscription",
    "decode_event",
    "delivery",
    "encode_event",
    "subscriptions",
]
