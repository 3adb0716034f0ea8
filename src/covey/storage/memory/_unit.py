"""The unit of work of the in-memory backend, and the application's stand-in handle."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from covey.storage._errors import app_write_failed, handle_closed
from covey.storage._events_contract import EventRecord
from covey.storage._message import Message
from covey.storage._model import Fence, Reply
from covey.storage._streams_contract import StreamEntry
from covey.storage._unit import CheckedUnitOfWork, PlainCompletion, StateWrite, check_callback

if TYPE_CHECKING:
    from covey.storage.memory._messages import InMemoryMessageStorage


class MemoryTransaction:
    """What ``ctx.transaction`` is on the memory backend: callables run at commit.

    There is no database to write to, so the application registers functions
    that apply its writes (to its own dictionaries, say). They run inside the
    unit's commit, in order, after covey's checks passed (fence, processed flag,
    state versions) and before covey's own writes, with no ``await`` in between:
    nothing else runs on the event loop meanwhile, so they are applied together
    with the state, the outgoing messages and the reply, or not at all. A unit
    that is discarded or refused never calls them.

    A callable that raises makes the commit fail with
    :class:`~covey.core.EntityError` (reason ``handler_failed``, ``details``:
    ``sql`` ``None``, ``error``); covey then writes nothing and the callables
    after it are not called. Whatever the ones before it changed is the
    application's to undo: keep each callable a single, complete write.
    """

    __slots__ = ("_closed", "_writes")

    def __init__(self) -> None:
        self._writes: list[Callable[[], Any]] = []
        self._closed = False

    def on_commit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` inside the commit (a plain function: it must not await).

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"] == "callback"``)
                for something that is not a plain callable; (``"transaction"``)
                once the unit is committed or discarded.
        """
        check_callback(fn)
        if self._closed:
            raise handle_closed()
        self._writes.append(fn)

    def close(self) -> None:
        """Refuse further writes (the unit is finished)."""
        self._closed = True

    def apply(self) -> None:
        """Call the registered functions (the commit does this)."""
        for fn in self._writes:
            try:
                fn()
            except Exception as exc:
                raise app_write_failed(None, exc) from exc


class InMemoryUnitOfWork(CheckedUnitOfWork):
    """A unit of the in-memory backend: its commit is one synchronous step."""

    __slots__ = ("_app", "_store")

    def __init__(self, store: InMemoryMessageStorage, fence: Fence, request_id: int,
                 plain: PlainCompletion) -> None:
        super().__init__(fence, request_id, plain)
        self._store = store
        self._app: MemoryTransaction | None = None

    async def _transaction(self) -> MemoryTransaction:
        if self._app is None:
            self._app = MemoryTransaction()
        return self._app

    async def _commit(self, reply: Reply, states: list[StateWrite], sent: list[Message],
                      events: list[EventRecord], streams: list[StreamEntry]) -> None:
        app = self._app
        if app is not None:
            app.close()
        self._store.commit_unit(reply, self.fence, states, sent, events, streams, app)

    async def _discard(self) -> None:
        if self._app is not None:
            self._app.close()
