"""asyncpg failures as covey errors.

A lost or unreachable server is ``storage_unavailable`` (retryable); the cause is
always chained so the original asyncpg error stays visible in tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from covey.core import ClusterError, Reason, StorageError

#: Failures of the connection itself, not of one statement: every op on that
#: connection fails the same way, so group commit must not split the batch.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    # The protocol got out of step, e.g. a FATAL from a terminated backend arrived
    # while idle: the connection cannot be used any more.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.AdminShutdownError,  # pg_terminate_backend, server shutdown
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
    asyncio.TimeoutError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be used at all."""
    if isinstance(exc, StorageError):
        return exc.reason is Reason.STORAGE_UNAVAILABLE and isinstance(
            exc.__cause__, CONNECTION_ERRORS
        )
    return isinstance(exc, CONNECTION_ERRORS)


def translate(exc: BaseException, what: str) -> BaseException:
    """The covey error for an exception raised while doing ``what``."""
    if isinstance(exc, ClusterError):
        return exc
    if isinstance(exc, CONNECTION_ERRORS):
        error: ClusterError = StorageError(
            f"PostgreSQL is unavailable ({what}): {type(exc).__name__}: {exc}",
            reason=Reason.STORAGE_UNAVAILABLE,
        )
    elif isinstance(exc, asyncpg.UniqueViolationError) and "messages_pkey" in str(
        getattr(exc, "constraint_name", "") or exc
    ):
        error = ClusterError(
            f"a message with this id is stored already ({what})",
            reason=Reason.INVALID_ARGUMENT,
            field="id",
        )
    elif isinstance(exc, asyncpg.PostgresError):
        # Serialization failures, deadlocks, lock timeouts: trying again may work.
        error = StorageError(
            f"PostgreSQL refused {what}: {type(exc).__name__}: {exc}",
            reason=Reason.STORAGE_UNAVAILABLE,
            sqlstate=getattr(exc, "sqlstate", None),
        )
    else:
        return exc
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise asyncpg and socket errors of the block as covey errors."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as exc:
        error = translate(exc, what)
        if error is exc:
            raise
        raise error from exc


def corrupt(message_id: int, problem: str) -> StorageError:
    """A stored message row that cannot be read back."""
    return StorageError(
        f"stored message {message_id} is corrupt: {problem}",
        reason=Reason.STORAGE_CORRUPT,
        message_id=message_id,
    )
