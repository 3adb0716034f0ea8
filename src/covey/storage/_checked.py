"""The public face of every backend: check the arguments, then call the backend.

Each backend subclasses :class:`CheckedRunnerStorage`, :class:`CheckedMessageStorage`
and :class:`CheckedStateStore` and implements only the private ``_`` methods.
The public methods (the contracts of :mod:`covey.storage._contracts`) are
``@final``: they run the shared checks of :mod:`._checks`, :mod:`._message` and
:mod:`._runner_checks` and hand the backend values it can trust (ids distinct
and sorted, shards distinct and sorted, times as floats). A backend cannot skip
a check, and a new backend gets every one of them for free. Calls that can only
have an empty answer (no ids, no shards, ``limit=0``) are answered here too.

The cost is one extra coroutine frame per call; the checks themselves were
always paid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, Literal, final

from covey.core import EntityAddress, RunnerAddress, ShardId
from covey.storage._checks import (
    check_address,
    check_counting,
    check_fence,
    check_id,
    check_ids,
    check_limit,
    check_listing,
    check_purge,
    check_reply,
    check_reschedule,
    check_shard_ids,
    check_state_key,
    check_state_write,
    check_version,
)
from covey.storage._errors import invalid
from covey.storage._message import (
    Message,
    MessageRecord,
    check_message,
    check_messages,
    dedupe_key,
)
from covey.storage._model import Fence, Reply, RunnerInfo, SaveResult, Versioned
from covey.storage._runner_checks import (
    check_max_age,
    check_registration,
    check_runner_address,
    check_runner_shards,
)
from covey.storage._unit import CheckedUnitOfWork

MessageState = Literal["unprocessed", "processed", "error"]


class CheckedRunnerStorage(ABC):
    """:class:`~covey.storage.RunnerStorage` with its checks; backends implement ``_`` methods."""

    @final
    async def register(
        self, address: RunnerAddress, *, groups: Sequence[str] = ("default",), weight: int = 1
    ) -> int:
        return await self._register(*check_registration(address, groups, weight))

    @final
    async def heartbeat(self, address: RunnerAddress) -> bool:
        return await self._heartbeat(check_runner_address(address))

    @final
    async def live_runners(self, max_age: float) -> list[RunnerInfo]:
        return await self._live_runners(check_max_age(max_age))

    @final
    async def unregister(self, address: RunnerAddress) -> None:
        await self._unregister(check_runner_address(address))

    @final
    async def expire(self, address: RunnerAddress) -> None:
        await self._expire(check_runner_address(address))

    @final
    async def acquire(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> dict[ShardId, int]:
        # no shortcut for no shards: acquire(address, []) opens the lock session
        return await self._acquire(address, check_runner_shards(address, shards, serving=True))

    @final
    async def refresh(self, address: RunnerAddress, shards: Collection[ShardId]) -> set[ShardId]:
        return await self._refresh(address, check_runner_shards(address, shards))

    @final
    async def release(self, address: RunnerAddress, shards: Collection[ShardId]) -> None:
        await self._release(address, check_runner_shards(address, shards))

    @final
    async def release_all(self, address: RunnerAddress) -> None:
        await self._release_all(check_runner_address(address))

    @abstractmethod
    async def _register(self, address: RunnerAddress, groups: tuple[str, ...],
                        weight: int) -> int: ...

    @abstractmethod
    async def _heartbeat(self, address: RunnerAddress) -> bool: ...

    @abstractmethod
    async def _live_runners(self, max_age: float) -> list[RunnerInfo]: ...

    @abstractmethod
    async def _unregister(self, address: RunnerAddress) -> None: ...

    @abstractmethod
    async def _expire(self, address: RunnerAddress) -> None: ...

    @abstractmethod
    async def _acquire(self, address: RunnerAddress,
                       shards: list[ShardId]) -> dict[ShardId, int]: ...

    @abstractmethod
    async def _refresh(self, address: RunnerAddress, shards: list[ShardId]) -> set[ShardId]: ...

    @abstractmethod
    async def _release(self, address: RunnerAddress, shards: list[ShardId]) -> None: ...

    @abstractmethod
    async def _release_all(self, address: RunnerAddress) -> None: ...


class CheckedMessageStorage(ABC):
    """:class:`~covey.storage.MessageStorage` with its checks; backends implement ``_`` methods."""

    @final
    async def save_request(self, message: Message) -> SaveResult:
        return await self._save_request(check_message(message))

    @final
    async def save_requests(self, messages: Sequence[Message]) -> list[SaveResult]:
        batch = check_messages(messages)
        return await self._save_requests(batch) if batch else []

    @final
    def unit(self, fence: Fence, request_id: int) -> CheckedUnitOfWork:
        check_fence(fence)
        return self._unit(fence, check_id("request_id", request_id))

    @final
    async def save_reply(self, reply: Reply, fence: Fence) -> None:
        check_reply(reply, fence)
        await self._save_reply(reply, fence)

    @final
    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        wanted = check_shard_ids(shards)
        if not check_limit(limit) or not wanted:
            return []
        return await self._unprocessed(wanted, limit)

    @final
    async def unprocessed_of(self, address: EntityAddress, *, limit: int) -> list[Message]:
        check_address(address)
        return await self._unprocessed_of(address, limit) if check_limit(limit) else []

    @final
    async def reschedule(
        self, request_id: int, *, deliver_at: float, error: str, fence: Fence
    ) -> int:
        due = check_reschedule(request_id, deliver_at, error, fence)
        return await self._reschedule(request_id, due, error, fence)

    @final
    async def mark_started(self, request_ids: Collection[int]) -> None:
        ids = check_ids(request_ids)
        if ids:
            await self._mark_started(ids)

    @final
    async def inspect(self, request_ids: Collection[int]) -> dict[int, MessageRecord]:
        ids = check_ids(request_ids)
        return await self._inspect(ids) if ids else {}

    @final
    async def list_messages(
        self,
        entity_type: str,
        *,
        state: MessageState | None = None,
        tag: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[MessageRecord]:
        check_listing(entity_type, state, tag, limit, before_id)
        if not limit:
            return []
        return await self._list_messages(entity_type, state, tag, limit, before_id)

    @final
    async def count_messages(
        self, entity_type: str, *, with_processed: bool = True
    ) -> list[tuple[str, int, str, int]]:
        check_counting(entity_type, with_processed)
        return await self._count_messages(entity_type, with_processed)

    @final
    async def delete(self, request_ids: Collection[int]) -> int:
        ids = check_ids(request_ids)
        return await self._delete(ids) if ids else 0

    @final
    async def next_due(self, shards: Collection[ShardId]) -> float | None:
        wanted = check_shard_ids(shards)
        return await self._next_due(wanted) if wanted else None

    @final
    async def get(self, request_id: int) -> Message | None:
        return await self._get(check_id("request_id", request_id))

    @final
    async def find(self, address: EntityAddress, tag: str, primary_key: str) -> int | None:
        if not isinstance(primary_key, str):
            raise invalid("primary_key", primary_key, "a non-empty string")
        probe = Message(1, address, tag, b"", primary_key=primary_key)
        check_message(probe)
        return await self._find(dedupe_key(address, tag, primary_key))

    @final
    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        ids = check_ids(request_ids)
        return await self._replies_for(ids) if ids else {}

    @final
    async def reset_shards(self, shards: Collection[ShardId]) -> None:
        wanted = check_shard_ids(shards)
        if wanted:
            await self._reset_shards(wanted)

    @final
    async def reset_request(self, request_id: int) -> None:
        await self._reset_request(check_id("request_id", request_id))

    @final
    async def clear_address(self, address: EntityAddress) -> int:
        return await self._clear_address(check_address(address))

    @final
    async def purge(
        self, before: float, *, limit: int = 1000, keep_errors_of: Collection[str] = ()
    ) -> int:
        cutoff, kept = check_purge(before, limit, keep_errors_of)
        return await self._purge(cutoff, limit, kept)

    @abstractmethod
    async def _save_request(self, message: Message) -> SaveResult: ...

    @abstractmethod
    async def _save_requests(self, messages: list[Message]) -> list[SaveResult]:
        """Never called with an empty list."""

    @abstractmethod
    def _unit(self, fence: Fence, request_id: int) -> CheckedUnitOfWork:
        """A new unit; nothing may be opened here (see :mod:`covey.storage._unit`)."""

    @abstractmethod
    async def _save_reply(self, reply: Reply, fence: Fence) -> None: ...

    @abstractmethod
    async def _unprocessed(self, shards: list[ShardId], limit: int) -> list[Message]:
        """``shards`` and ``limit`` are never empty or 0."""

    @abstractmethod
    async def _unprocessed_of(self, address: EntityAddress, limit: int) -> list[Message]:
        """``limit`` is never 0."""

    @abstractmethod
    async def _reschedule(self, request_id: int, deliver_at: float, error: str,
                          fence: Fence) -> int: ...

    @abstractmethod
    async def _mark_started(self, ids: list[int]) -> None: ...

    @abstractmethod
    async def _inspect(self, ids: list[int]) -> dict[int, MessageRecord]: ...

    @abstractmethod
    async def _list_messages(self, entity_type: str, state: MessageState | None,
                             tag: str | None, limit: int,
                             before_id: int | None) -> list[MessageRecord]: ...

    @abstractmethod
    async def _count_messages(self, entity_type: str,
                              with_processed: bool) -> list[tuple[str, int, str, int]]: ...

    @abstractmethod
    async def _delete(self, ids: list[int]) -> int: ...

    @abstractmethod
    async def _next_due(self, shards: list[ShardId]) -> float | None: ...

    @abstractmethod
    async def _get(self, request_id: int) -> Message | None: ...

    @abstractmethod
    async def _find(self, dedupe_key: str) -> int | None: ...

    @abstractmethod
    async def _replies_for(self, ids: list[int]) -> dict[int, Reply]: ...

    @abstractmethod
    async def _reset_shards(self, shards: list[ShardId]) -> None: ...

    @abstractmethod
    async def _reset_request(self, request_id: int) -> None: ...

    @abstractmethod
    async def _clear_address(self, address: EntityAddress) -> int: ...

    @abstractmethod
    async def _purge(self, before: float, limit: int, keep_errors_of: list[str]) -> int: ...


class CheckedTransactionalMessages(CheckedMessageStorage):
    """Adds :class:`~covey.storage.TransactionalMessages` with its checks.

    ``connection_types`` are the connection classes the backend accepts.
    """

    connection_types: tuple[type, ...] = ()

    @final
    async def save_requests_in(
        self, connection: Any, messages: Sequence[Message]
    ) -> list[SaveResult]:
        if not isinstance(connection, self.connection_types):
            raise invalid("connection", connection,
                          "a connection of the database, inside the application's transaction")
        batch = check_messages(messages)
        return await self._save_requests_in(connection, batch) if batch else []

    @abstractmethod
    async def _save_requests_in(self, connection: Any,
                                messages: list[Message]) -> list[SaveResult]: ...


class CheckedStateStore(ABC):
    """:class:`~covey.storage.StateStore` with its checks; backends implement ``_`` methods."""

    @final
    async def get(self, key: str) -> Versioned | None:
        return await self._get(check_state_key(key))

    @final
    async def set(
        self, key: str, value: bytes, *, expected_version: int | None, fence: Fence | None = None,
        sync: bool = True,
    ) -> int:
        check_state_write(key, value, expected_version, fence)
        if not isinstance(sync, bool):
            raise invalid("sync", sync, "a bool")
        return await self._set(key, value, expected_version, fence, sync)

    @final
    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_state_key(key)
        check_version(expected_version)
        return await self._delete(key, expected_version)

    @abstractmethod
    async def _get(self, key: str) -> Versioned | None: ...

    @abstractmethod
    async def _set(self, key: str, value: bytes, expected_version: int | None,
                   fence: Fence | None, sync: bool = True) -> int: ...

    @abstractmethod
    async def _delete(self, key: str, expected_version: int | None) -> bool: ...
