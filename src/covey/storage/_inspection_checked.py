"""The public face of every backend's :class:`InspectionStore`: checks, then the backend.

As :mod:`covey.storage._checked` does for the other stores: the public methods
are ``@final``, refuse a malformed argument the same way on every backend
(``invalid_argument`` naming the field) and hand the backend values it can
trust; a page of ``limit=0`` is answered here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, final

from covey.core import MAX_NAME_BYTES
from covey.core.runtime import check_text
from covey.storage._checks import INT64_MAX, check_entity_type, check_id, check_int, check_time
from covey.storage._inspection_contract import MAX_CAP, MAX_PAGE, ShardRow, TagCount
from covey.storage._message import MessageRecord

#: which partial index a page reads: unprocessed rows or error replies
Which = Literal["dead", "pending"]
#: ``before_id`` when none is given: above every id (ids are int64)
NO_BEFORE = INT64_MAX


def check_page(entity_type: object, tag: object, limit: object, before_id: object) -> None:
    """Refuse a malformed page request."""
    check_entity_type(entity_type)
    if tag is not None:
        check_text("tag", tag, max_bytes=MAX_NAME_BYTES, empty=True)
    check_int("limit", limit, 0, MAX_PAGE)
    if before_id is not None:
        check_id("before_id", before_id)


class CheckedInspectionStore(ABC):
    """:class:`~covey.storage.InspectionStore` with its checks; backends implement
    the ``_`` methods (``before_id`` is then an int: :data:`NO_BEFORE` for none)."""

    @final
    async def shards(self) -> list[ShardRow]:
        return await self._shards()

    @final
    async def tag_counts(self, entity_type: str, *, now: float,
                         cap: int = 10_000) -> list[TagCount]:
        check_entity_type(entity_type)
        seconds = check_time("now", now)
        check_int("cap", cap, 1, MAX_CAP)
        return await self._tag_counts(entity_type, seconds, cap)

    @final
    async def dead_messages(self, entity_type: str, *, tag: str | None = None, limit: int = 50,
                            before_id: int | None = None) -> list[MessageRecord]:
        check_page(entity_type, tag, limit, before_id)
        if not limit:
            return []
        return await self._page("dead", entity_type, tag, limit,
                                NO_BEFORE if before_id is None else before_id)

    @final
    async def pending_messages(self, entity_type: str, *, tag: str | None = None,
                               limit: int = 50,
                               before_id: int | None = None) -> list[MessageRecord]:
        check_page(entity_type, tag, limit, before_id)
        if not limit:
            return []
        return await self._page("pending", entity_type, tag, limit,
                                NO_BEFORE if before_id is None else before_id)

    @abstractmethod
    async def _shards(self) -> list[ShardRow]: ...

    @abstractmethod
    async def _tag_counts(self, entity_type: str, now: float, cap: int) -> list[TagCount]: ...

    @abstractmethod
    async def _page(self, which: Which, entity_type: str, tag: str | None, limit: int,
                    before_id: int) -> list[MessageRecord]:
        ...
