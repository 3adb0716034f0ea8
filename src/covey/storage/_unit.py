"""The unit of work every backend shares: its checks, its staging, its callbacks.

A backend subclasses :class:`CheckedUnitOfWork` and implements three ``_``
methods: open the application's handle (:meth:`~CheckedUnitOfWork._transaction`),
write what was staged in one fenced transaction
(:meth:`~CheckedUnitOfWork._commit`) and drop what it holds
(:meth:`~CheckedUnitOfWork._discard`). The public methods (the
:class:`~covey.storage.UnitOfWork` contract) are ``@final``: they check their
arguments once for every backend, keep the staged effects and run the
callbacks, so every backend gets them the same way.

A unit is made for every run of a persisted message, most of which use none of
it: creating one fills a few slots and allocates nothing else, and committing an
unused one is the plain group-committed ``save_reply``.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

from covey.storage._checks import check_reply, check_state_write
from covey.storage._errors import invalid, unit_finished
from covey.storage._event_checks import check_events
from covey.storage._events_contract import EventRecord
from covey.storage._message import Message, check_messages
from covey.storage._model import Fence, Reply
from covey.storage._streams_checked import check_entries
from covey.storage._streams_contract import StreamEntry

log = logging.getLogger("covey.storage")

#: How an unused unit completes: the storage's plain fenced ``save_reply``.
PlainCompletion = Callable[[Reply, Fence], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A staged compare-and-set of one state key (``None``: must not exist yet)."""

    key: str
    value: bytes
    expected_version: int | None


def check_callback(callback: object) -> Callable[[], Any]:
    """``callback`` if it is a plain callable taking no argument.

    A coroutine function is refused: callbacks run without awaiting (atomically
    with a commit, or right after it), so its body would never run.
    """
    if not callable(callback) or inspect.iscoroutinefunction(callback):
        raise invalid("callback", callback, "a function taking no argument (not async)")
    return callback


def run_callbacks(callbacks: list[Callable[[], Any]] | None, when: str) -> None:
    """Call each callback once; one that raises is logged and the others still run."""
    for callback in callbacks or ():
        try:
            callback()
        except Exception:
            # The commit (or discard) has happened; failing it now would lie.
            log.exception("a unit-of-work callback failed %s", when)


class CheckedUnitOfWork(ABC):
    """:class:`~covey.storage.UnitOfWork` with its checks; backends implement ``_`` methods.

    Args:
        fence: the owner's fence for the message's shard (checked by
            :meth:`~covey.storage._checked.CheckedMessageStorage.unit`).
        request_id: the stored request this run completes.
        plain: the storage's fenced ``save_reply`` (an unused unit's commit).
    """

    __slots__ = ("_done", "_events", "_on_commit", "_on_discard", "_opened", "_plain",
                 "_sent", "_states", "_streams", "fence", "request_id")

    def __init__(self, fence: Fence, request_id: int, plain: PlainCompletion) -> None:
        self.fence = fence
        self.request_id = request_id
        self._plain = plain
        self._done = False
        self._opened = False
        # Allocated on first use: most units are never used.
        self._states: dict[str, StateWrite] | None = None
        self._sent: list[Message] | None = None
        self._events: list[EventRecord] | None = None
        self._streams: list[StreamEntry] | None = None
        self._on_commit: list[Callable[[], Any]] | None = None
        self._on_discard: list[Callable[[], Any]] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of message {self.request_id} ({self.fence})>"

    @final
    @property
    def used(self) -> bool:
        """Whether anything was staged or the transaction opened."""
        return (self._opened or bool(self._states) or bool(self._sent)
                or bool(self._events) or bool(self._streams))

    @final
    @property
    def sent(self) -> list[Message]:
        """The outgoing messages staged with :meth:`send`, in order."""
        return list(self._sent or ())

    @property
    def lost(self) -> bool:
        """Whether the store lost the open transaction (see the contract)."""
        return self._lost()

    def _lost(self) -> bool:
        """Backends whose transaction can be lost under the handler override this."""
        return False

    @final
    async def transaction(self) -> Any:
        """The application's handle inside the unit's transaction (opened once)."""
        self._check_open()
        # Set first: if opening fails half way, commit and discard still clean up.
        self._opened = True
        return await self._transaction()

    @final
    def put_state(self, key: str, value: bytes, *, expected_version: int | None) -> None:
        """Stage a compare-and-set of ``key``; a later one of the same key replaces it."""
        check_state_write(key, value, expected_version, None)
        self._check_open()
        if self._states is None:
            self._states = {}
        self._states[key] = StateWrite(key, value, expected_version)

    @final
    def send(self, messages: Sequence[Message]) -> None:
        """Stage outgoing messages, stored at commit (deduplicated as ``save_requests``)."""
        batch = check_messages(messages)
        self._check_open()
        if batch:
            if self._sent is None:
                self._sent = []
            self._sent.extend(batch)

    @final
    def publish(self, events: Sequence[EventRecord]) -> None:
        """Stage events, stored in the log at commit (a stored id is kept as it was)."""
        batch = check_events(events)
        self._check_open()
        if batch:
            if self._events is None:
                self._events = []
            self._events.extend(batch)

    @final
    def append_stream(self, entries: Sequence[StreamEntry]) -> None:
        """Stage stream items, appended at commit as ``StreamStore.append`` would."""
        batch = check_entries(entries)
        self._check_open()
        if batch:
            if self._streams is None:
                self._streams = []
            self._streams.extend(batch)

    @final
    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the unit committed."""
        check_callback(callback)
        self._check_open()
        if self._on_commit is None:
            self._on_commit = []
        self._on_commit.append(callback)

    @final
    def on_discard(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the unit was discarded or its commit failed."""
        check_callback(callback)
        self._check_open()
        if self._on_discard is None:
            self._on_discard = []
        self._on_discard.append(callback)

    @final
    async def commit(self, reply: Reply) -> None:
        """Write everything staged and ``reply`` in one fenced transaction.

        An unused unit is completed by the storage's plain ``save_reply``.
        """
        check_reply(reply, self.fence)
        if reply.request_id != self.request_id:
            raise invalid("reply.request_id", reply.request_id,
                          f"the unit's message id {self.request_id}")
        self._check_open()
        self._done = True
        try:
            if self.used:
                await self._commit(reply, list((self._states or {}).values()),
                                   list(self._sent or ()), list(self._events or ()),
                                   list(self._streams or ()))
            else:
                await self._plain(reply, self.fence)
        except BaseException:
            run_callbacks(self._on_discard, "after a failed commit")
            raise
        run_callbacks(self._on_commit, "after the commit")

    @final
    async def discard(self) -> None:
        """Roll back and drop everything staged; safe to call twice and after commit."""
        if self._done:
            return
        self._done = True
        try:
            if self._opened:
                await self._discard()
        finally:
            run_callbacks(self._on_discard, "after the discard")

    def _check_open(self) -> None:
        if self._done:
            raise unit_finished(self.request_id)

    @abstractmethod
    async def _transaction(self) -> Any:
        """Open (first call) or return the application's handle."""

    @abstractmethod
    async def _commit(self, reply: Reply, states: list[StateWrite], sent: list[Message],
                      events: list[EventRecord], streams: list[StreamEntry]) -> None:
        """Write ``states``, ``sent``, ``events``, ``streams`` (appended with the commit
        time as ``now``), the application's writes and ``reply`` in one transaction
        fenced by :attr:`fence`; nothing at all if any of it is refused. Release
        whatever :meth:`_transaction` opened, whatever happens."""

    @abstractmethod
    async def _discard(self) -> None:
        """Roll back and release what :meth:`_transaction` opened (only called then)."""
