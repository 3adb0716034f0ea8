"""Every error a storage backend raises, built here with one ``details`` vocabulary.

Backends never construct these errors themselves, so the same failure carries
the same keys on memory, SQLite and PostgreSQL:

============  =====================  ===============================================
error         reason                 ``details``
============  =====================  ===============================================
bad argument  ``invalid_argument``   ``field``: the argument (``address.port``, …);
                                     ``limit`` / ``size`` for a text too long
not found     ``message_not_found``  ``message_id``
processed     ``already_processed``  ``message_id``
fenced        ``fenced``             ``shard`` (``"group:n"``), ``epoch`` (the
                                     fence's), ``current_epoch`` (stored; ``None``
                                     if never acquired); for a message of another
                                     shard also ``message_id``, ``message_shard``
conflict      ``version_conflict``   ``key``, ``expected_version``,
                                     ``current_version`` (``None``: no such key)
corrupt row   ``storage_corrupt``    ``message_id``, ``address`` (a runner) or
                                     ``key`` (state)
app write     ``handler_failed``     ``sql`` (the application's statement; ``None``
                                     when not known), ``error`` (what failed)
============  =====================  ===============================================

:func:`completion_refused` is the fenced-completion rule itself (which error a
reply or a reschedule gets, in which order), shared by every backend.
"""

from __future__ import annotations

from covey.core import (
    MAX_MACHINE_ID,
    AlreadyProcessed,
    ClusterError,
    EntityError,
    FencedOut,
    MessageNotFound,
    Reason,
    ShardId,
    StorageError,
    VersionConflict,
)
from covey.core.runtime import invalid_argument
from covey.storage._model import Fence


def invalid(field: str, value: object, why: str | None = None) -> ClusterError:
    """A bad argument: ``invalid_argument`` with ``details["field"]``.

    ``why`` says what was expected (default: the value's type). The value is
    shown cut to 80 characters: a hostile one may be megabytes long.
    """
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return invalid_argument(field, f"{shown} ({why or type(value).__name__})")


def message_not_found(message_id: int) -> MessageNotFound:
    """No stored message has ``message_id``."""
    return MessageNotFound(f"no stored message has id {message_id}", message_id=message_id)


def already_processed(message_id: int) -> AlreadyProcessed:
    """The message has a reply already."""
    return AlreadyProcessed(f"message {message_id} has a reply already",
                            message_id=message_id)


def fenced_out(fence: Fence, current_epoch: int | None) -> FencedOut:
    """``fence`` carries an epoch that is not the shard's ``current_epoch``."""
    return FencedOut(
        f"shard {fence.shard} is at epoch {current_epoch}, not {fence.epoch}: "
        "another runner owns it now",
        shard=str(fence.shard), epoch=fence.epoch, current_epoch=current_epoch,
    )


def fenced_elsewhere(fence: Fence, message_id: int, message_shard: ShardId,
                     current_epoch: int | None) -> FencedOut:
    """``fence`` is for another shard than the message's."""
    return FencedOut(
        f"message {message_id} lives in shard {message_shard}, "
        f"not in the fenced shard {fence.shard}",
        shard=str(fence.shard), epoch=fence.epoch, current_epoch=current_epoch,
        message_id=message_id, message_shard=str(message_shard),
    )


def completion_refused(
    fence: Fence, current_epoch: int | None, message_id: int,
    message_shard: ShardId | None, processed: bool,
) -> StorageError | None:
    """Why a fenced completion (a reply or a reschedule) is refused, or ``None``.

    Checked in this order on every backend, inside the write's own transaction:
    the message exists (else :func:`message_not_found`); it lives in the fenced
    shard (:func:`fenced_elsewhere`); the fence's epoch is the shard's current
    one (:func:`fenced_out`); it has no reply yet (:func:`already_processed`).

    Args:
        fence: the fence the write carries.
        current_epoch: the shard's epoch in storage (``None``: never acquired).
        message_id: the message to complete.
        message_shard: where it lives (``None``: no such message).
        processed: whether it has a reply.
    """
    if message_shard is None:
        return message_not_found(message_id)
    if message_shard != fence.shard:
        return fenced_elsewhere(fence, message_id, message_shard, current_epoch)
    if current_epoch != fence.epoch:
        return fenced_out(fence, current_epoch)
    if processed:
        return already_processed(message_id)
    return None


def version_conflict(key: str, expected_version: int | None,
                     current_version: int | None) -> VersionConflict:
    """A compare-and-set of ``key`` found ``current_version``, not the one expected."""
    return VersionConflict(
        f"state {key!r} is at version {current_version}, expected {expected_version}",
        key=key, expected_version=expected_version, current_version=current_version,
    )


def corrupt_message(message_id: object, problem: str) -> StorageError:
    """A stored message row that cannot be read back."""
    return StorageError(f"stored message {message_id} is corrupt: {problem}",
                        reason=Reason.STORAGE_CORRUPT, message_id=message_id)


def corrupt_runner(address: object, problem: str) -> StorageError:
    """A stored registration that cannot be read back."""
    return StorageError(f"stored runner {address!r} is corrupt: {problem}",
                        reason=Reason.STORAGE_CORRUPT, address=str(address))


def corrupt_state(key: str, problem: str) -> StorageError:
    """A stored state value that cannot be read back."""
    return StorageError(f"stored state {key!r} is corrupt: {problem}",
                        reason=Reason.STORAGE_CORRUPT, key=key)


def message_vanished(message_id: int, during: str) -> StorageError:
    """A row seen a moment ago is gone (deleted concurrently); a retry may succeed."""
    return StorageError(f"message {message_id} vanished while {during}; retry",
                        message_id=message_id)


def app_write_failed(sql: str | None, exc: BaseException | str) -> EntityError:
    """The application's own write in a unit of work failed: the handler's error.

    A unit's commit that meets it writes nothing; the completion path stores it
    as the handler's error reply, as if the handler had raised it.
    """
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return EntityError(f"the application's write failed: {error}",
                       reason=Reason.HANDLER_FAILED, sql=sql, error=error)


def unit_finished(request_id: int) -> ClusterError:
    """A unit of work is used after its commit or discard."""
    return invalid_argument("unit", f"the unit of work of message {request_id} is committed "
                            "or discarded already", message_id=request_id)


def handle_closed() -> ClusterError:
    """The application writes through a unit's handle after the unit finished."""
    return invalid_argument("transaction", "the unit of work is committed or discarded "
                            "already: its writes would be lost")


def machine_ids_exhausted() -> StorageError:
    """Every machine id (0..:data:`~covey.core.MAX_MACHINE_ID`) is held by a registration."""
    return StorageError(
        f"all {MAX_MACHINE_ID + 1} machine ids are taken by registered runners",
        limit=MAX_MACHINE_ID + 1,
    )


def not_started(location: str) -> StorageError:
    """The storage is used before ``start()`` or after ``close()``."""
    return StorageError(f"storage {location} is not started (or closed)", location=location)


def group_not_found(group: str, topic: str) -> ClusterError:
    """No subscriber group ``group`` is registered for ``topic``.

    ``invalid_argument`` (``details["field"] == "group"``, plus ``group`` and
    ``topic``): :class:`~covey.core.Reason` has no generic ``not_found`` and a
    group name that is not registered is the caller's mistake, not retryable.
    """
    return invalid_argument("group", f"no group {group!r} is registered for topic {topic!r}",
                            group=group, topic=topic)
