"""Durable entity state: the snapshot an instance committed last, and its changes.

An entity declared with ``state=`` keeps its state in the state store under
:func:`state_key`, as ``{"v": schema version, "s": the model's plain data}``
(msgpack). Reading runs the stored data through the model's upcasters (from its
stored version to the current one) before validating it; a snapshot of a
version newer than the code knows fails with ``state_version_unknown`` and is
left as it is.

:class:`DurableState` is one instance's view of it: the encoding and store
version of the state it committed last. After a persisted handler the new
state, if it changed, is staged on the run's unit of work with a
compare-and-set on that version; the instance is held (no other handler runs
on it) until the unit commits (the snapshot advances) or is discarded (the
in-memory state goes back to the snapshot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic

from covey.core import (
    ClusterError,
    EntityAddress,
    EntityError,
    MsgpackCodec,
    Reason,
    StorageError,
)
from covey.core.runtime import state_version, upcast, validate
from covey.sharding.runtime import error_payload
from covey.storage import Reply, StateStore, UnitOfWork

#: every entity's durable state lives under this prefix of the state store
STATE_KEY_PREFIX = "covey.state/"

#: what makes a stored snapshot unusable for this code: the entity's calls fail
#: with it (a persisted one gets it as its reply) and the row stays untouched
UNREADABLE = frozenset({Reason.STATE_VERSION_UNKNOWN, Reason.PAYLOAD_INVALID,
                        Reason.STORAGE_CORRUPT})


class StateUnreadable(Exception):
    """The stored state of an entity cannot be read by this code (``error`` says
    why: one of :data:`UNREADABLE`); unlike a storage outage, trying again
    later does not help."""

    def __init__(self, error: ClusterError) -> None:
        super().__init__(str(error))
        self.error = error


_codec = MsgpackCodec()


def state_key(entity_type: str, entity_id: str) -> str:
    """Where the durable state of entity ``entity_type/entity_id`` is stored."""
    return f"{STATE_KEY_PREFIX}{entity_type}/{entity_id}"


def encode_state(value: pydantic.BaseModel) -> bytes:
    """The stored form of ``value`` (tagged with its model's schema version)."""
    return _codec.encode({"v": state_version(type(value)), "s": value})


def decode_state(model: type[pydantic.BaseModel], data: bytes, key: str) -> pydantic.BaseModel:
    """A stored snapshot as ``model``, upcast from its stored version.

    Raises:
        EntityError: ``state_version_unknown`` for a version newer than
            ``model``'s (``details["stored_version"]``, ``["known_version"]``).
        StorageError: ``storage_corrupt`` when ``data`` is no snapshot at all.
        SerializationError: an upcaster failed, or the upcast data does not
            validate as ``model``.
    """
    stored: Any = _codec.decode(data, Any)
    version = stored.get("v") if isinstance(stored, dict) else None
    if not (type(version) is int and version >= 1 and "s" in stored):
        raise StorageError(f"the state stored under {key!r} is not a covey state snapshot",
                           reason=Reason.STORAGE_CORRUPT, key=key)
    return validate(upcast(model, stored["s"], version), model)


async def read_state(store: StateStore, model: type[pydantic.BaseModel],
                     key: str) -> pydantic.BaseModel | None:
    """The last committed state under ``key`` as ``model``, or ``None`` if none is stored."""
    stored = await store.get(key)
    return None if stored is None else decode_state(model, stored.value, key)


class DurableState:
    """One instance's durable state: what it committed last.

    Args:
        model: the entity's state model.
        key: where it is stored.
        committed: the encoding of the last committed state.
        version: its state-store version (``None``: nothing stored yet).
    """

    __slots__ = ("committed", "key", "model", "stale", "version")

    def __init__(self, model: type[pydantic.BaseModel], key: str, committed: bytes,
                 version: int | None) -> None:
        self.model = model
        self.key = key
        self.committed = committed
        self.version = version
        #: a commit failed: storage may hold newer state than ``committed``
        self.stale = False

    @classmethod
    async def load(cls, store: StateStore | None, model: type[pydantic.BaseModel],
                   address: EntityAddress) -> tuple[DurableState, pydantic.BaseModel]:
        """The state of the entity at ``address`` (a fresh ``model()`` when none is stored).

        Raises:
            StateUnreadable: the stored snapshot cannot be read by this code.
        """
        key = state_key(address.entity_type, address.entity_id)
        stored = None if store is None else await store.get(key)
        try:
            value = model() if stored is None else decode_state(model, stored.value, key)
        except ClusterError as exc:
            if exc.reason in UNREADABLE:
                raise StateUnreadable(exc) from exc
            raise
        # the baseline is the current encoding: an upcast snapshot is rewritten by
        # the next persisted call, an unchanged one never
        return cls(model, key, encode_state(value), None if stored is None else stored.version
                   ), value

    async def refresh(self, entity: Any, store: StateStore | None) -> None:
        """Read the state again if a failed commit left the snapshot in doubt."""
        if not self.stale:
            return
        fresh, value = await DurableState.load(store, self.model, entity.ctx.address)
        self.committed, self.version, self.stale = fresh.committed, fresh.version, False
        entity.state = value

    def restore(self, entity: Any) -> None:
        """Put the last committed state back into ``entity``."""
        entity.state = decode_state(self.model, self.committed, self.key)

    def read_only(self, entity: Any, request_id: int) -> Reply | None:
        """After a call that may not change the state: an error reply if it did
        (the state is restored), else ``None``."""
        try:
            unchanged = encode_state(entity.state) == self.committed
        except ClusterError as exc:
            self.restore(entity)
            return Reply(request_id, error_payload(exc), is_error=True)
        if unchanged:
            return None
        self.restore(entity)
        error = EntityError(
            f"{entity.ctx.address}: a volatile RPC changed the durable state (only "
            "persisted RPCs may change it); the change was undone",
            reason=Reason.STATE_READ_ONLY, entity_type=entity.ctx.address.entity_type)
        return Reply(request_id, error_payload(error), is_error=True)

    def stage(self, entity: Any, unit: UnitOfWork, reply: Reply,
              release: Callable[[], None]) -> tuple[Reply, bool]:
        """After a persisted handler: stage its state change on ``unit``.

        Returns the reply (an error one if the new state cannot be stored: it
        does not encode, or not as a valid ``model``) and whether the instance
        is held: then ``release`` is called once the unit
        committed or was discarded, else the caller releases it now.
        """
        if not reply.is_error:
            try:
                new = encode_state(entity.state)
                if new != self.committed:
                    # what is stored must read back: a handler that put a value the
                    # model refuses would make the entity unreadable from then on
                    decode_state(self.model, new, self.key)
            except ClusterError as exc:
                reply = Reply(reply.request_id, error_payload(exc), is_error=True)
        if reply.is_error:
            # the run keeps nothing: its unit is discarded (app writes gone)
            self.restore(entity)
            if unit.used:
                unit.on_discard(release)
                return reply, True
            return reply, False
        written = new != self.committed
        if written:
            unit.put_state(self.key, new, expected_version=self.version)
        if not unit.used:
            return reply, False

        def committed() -> None:
            if written:
                self.committed, self.version = new, (self.version or 0) + 1
            release()

        def discarded() -> None:
            # AlreadyProcessed, a version conflict or an unknown outcome: storage
            # may be ahead of the snapshot, so the next call reads it again
            self.stale = True
            self.restore(entity)
            release()

        unit.on_commit(committed)
        unit.on_discard(discarded)
        return reply, True
