"""What ``@cluster.subscribe`` declares: a group's handler of one topic, and its options."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from covey.core.runtime import invalid_argument
from covey.events._event import Event, check_event_class, check_name, event_topic
from covey.storage import GroupStart

if TYPE_CHECKING:
    from covey.events._context import EventContext

#: ``async def handler(event, ctx) -> None``
EventHandler = Callable[[Any, "EventContext"], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing event handler is retried, in place (its key waits meanwhile).

    ``@cluster.subscribe(retry=covey.Retry(...))`` is converted to this. The
    default: 5 attempts, 0.1 s doubling to 30 s, with jitter (50-100 % of the
    delay). After the last attempt the event goes to the group's dead-letter
    and the key moves on to its next event.
    """

    max_attempts: int = 5
    initial: float = 0.1
    maximum: float = 30.0
    factor: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise invalid_argument("retry", "max_attempts must be an int >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)
        return base * random.uniform(0.5, 1.0) if self.jitter else base

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, self.give_up_on) or not isinstance(exc, self.retry_on):
            return False
        return attempt < self.max_attempts


@dataclass(frozen=True)
class Subscription:
    """One group's subscription to one topic.

    Attributes:
        group: the subscriber group (every runner declaring it shares its work).
        topic: the topic read.
        classes: the event classes handled, by stored type name.
        fn: the handler, ``async def fn(event, ctx) -> None``.
        concurrency: handler runs of the group at once on one runner.
        start: where a new group starts (``latest`` or ``earliest``).
        retry: the retry policy.
    """

    group: str
    topic: str
    classes: Mapping[str, type[Event]]
    fn: EventHandler
    concurrency: int = 64
    start: GroupStart = "latest"
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def subscriptions(events: type[Event] | Sequence[type[Event]], fn: EventHandler, *,
                  group: str, concurrency: int, start: str,
                  retry: RetryPolicy | None) -> list[Subscription]:
    """The checked subscriptions of one declaration (one per topic of ``events``).

    Raises:
        ClusterError: ``invalid_argument`` naming the option (``event``,
            ``group``, ``concurrency``, ``start``, ``retry``, ``handler``).
    """
    given: list[object] = list(events) if isinstance(events, list | tuple) else [events]
    classes = [check_event_class(cls) for cls in given]
    if not classes:
        raise invalid_argument("event", "no event class given")
    check_name("group", group)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise invalid_argument("concurrency", f"{concurrency!r} is not an int >= 1")
    if start not in get_args(GroupStart):
        raise invalid_argument("start", f"{start!r} is not 'latest' or 'earliest'")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise invalid_argument("retry", f"{retry!r} is not a covey.Retry")
    if not inspect.iscoroutinefunction(fn) or len(inspect.signature(fn).parameters) != 2:
        raise invalid_argument("handler", f"group {group!r}: the handler is "
                               "'async def fn(event, ctx)'")
    by_topic: dict[str, dict[str, type[Event]]] = {}
    for cls in classes:
        names = by_topic.setdefault(event_topic(cls), {})
        if cls.__covey_event_type__ in names and names[cls.__covey_event_type__] is not cls:
            raise invalid_argument("event", f"two classes named {cls.__covey_event_type__!r} "
                                   f"in topic {event_topic(cls)!r}")
        names[cls.__covey_event_type__] = cls
    start_value: GroupStart = "earliest" if start == "earliest" else "latest"
    return [Subscription(group, topic, names, fn, concurrency, start_value,
                         retry or RetryPolicy()) for topic, names in by_topic.items()]
