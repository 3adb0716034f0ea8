"""asyncpg failures as covey errors.

Only what trying again may cure is ``storage_unavailable`` (retryable): a lost or
unreachable server, and the transient SQLSTATEs of :data:`TRANSIENT_SQLSTATES`
(serialization failure, deadlock, lock not available, statement timeout,
insufficient resources, shutdown, a read-only standby during a failover). The
rest never succeeds on a retry, so callers must not retry it until their
deadline: a data error (class 22 — NUL or bad encoding, a number out of range —,
class 23 integrity, 54 program limit such as an index row too large) is
``invalid_argument``; anything else (42 syntax or undefined object, a missing
privilege, corruption) is ``storage_corrupt``: the database is not in a state this
code can use. ``details["sqlstate"]`` keeps the code; the cause is always chained
so the original asyncpg error stays visible in tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from covey.core import ClusterError, Reason, StorageError
from covey.core.runtime import invalid_argument

#: SQLSTATE codes (or two-character classes) for which a retry may succeed.
TRANSIENT_SQLSTATES = frozenset({
    "08",  # connection exception
    "53",  # insufficient resources (disk full, out of memory, too many connections)
    "40001",  # serialization failure
    "40P01",  # deadlock detected
    "40003",  # statement completion unknown
    "55P03",  # lock not available (lock_timeout)
    "55006",  # object in use
    "57014",  # query cancelled (statement_timeout)
    "57P01", "57P02", "57P03", "57P05",  # admin/crash shutdown, cannot connect now, idle
    "25006",  # read-only transaction: a standby promoted during a failover
})
#: SQLSTATE classes of errors in the data a statement was given.
_DATA_CLASSES = frozenset({"22", "23", "54"})

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
        ) and not _bad_input(exc.__cause__)
    return isinstance(exc, CONNECTION_ERRORS) and not _bad_input(exc)


def _bad_input(exc: BaseException) -> bool:
    """asyncpg's client-side ``DataError`` (an ``InterfaceError`` and a ``ValueError``:
    a query argument it cannot encode) or a text that is not encodable at all."""
    return isinstance(exc, UnicodeError) or (
        isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError))


def statement_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the fault of one statement (its SQL or its data), which
    running it again cannot cure, rather than of the connection or the moment."""
    if _bad_input(exc):
        return True
    return (isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, CONNECTION_ERRORS)
            and not _transient(_sqlstate(exc)))


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def _transient(sqlstate: str) -> bool:
    return sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATES


def translate(exc: BaseException, what: str) -> BaseException:
    """The covey error for an exception raised while doing ``what``."""
    if isinstance(exc, ClusterError):
        return exc
    if _bad_input(exc):
        error: ClusterError = StorageError(
            f"PostgreSQL cannot take the data of {what}: {type(exc).__name__}: {exc}",
            reason=Reason.INVALID_ARGUMENT,
        )
    elif isinstance(exc, CONNECTION_ERRORS):
        error = StorageError(
            f"PostgreSQL is unavailable ({what}): {type(exc).__name__}: {exc}",
            reason=Reason.STORAGE_UNAVAILABLE,
        )
    elif isinstance(exc, asyncpg.UniqueViolationError) and "messages_pkey" in str(
        getattr(exc, "constraint_name", "") or exc
    ):
        error = invalid_argument("id", f"a message with this id is stored already ({what})")
    elif isinstance(exc, asyncpg.PostgresError):
        sqlstate = _sqlstate(exc)
        if _transient(sqlstate) or isinstance(exc, asyncpg.InvalidCachedStatementError):
            # serialization failures, deadlocks, lock timeouts; a cached plan that a
            # schema change invalidated (asyncpg prepares it again on the retry)
            reason = Reason.STORAGE_UNAVAILABLE
        elif sqlstate[:2] in _DATA_CLASSES:  # the data given: a retry fails the same way
            reason = Reason.INVALID_ARGUMENT
        else:  # 42 (undefined table/column, privilege), XX (corruption), …
            reason = Reason.STORAGE_CORRUPT
        error = StorageError(
            f"PostgreSQL refused {what} (SQLSTATE {sqlstate or '?'}): "
            f"{type(exc).__name__}: {exc}",
            reason=reason,
            sqlstate=sqlstate or None,
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

