"""The journal of one workflow execution: what its steps returned, in call order.

An execution re-runs its function from the top on every run (after a crash, a
pod move, a durable wait); each ``ctx`` operation takes the next sequence
number and, when the journal holds an entry there, returns what is journaled
instead of acting again. The journal also keeps the execution's mailbox
(signals not yet consumed), its published events and its cancel flag.

It is stored as one value of the state store, ``covey.workflow/<workflow id>``
(msgpack), written with a compare-and-set on its version and fenced by the
shard's epoch: a runner that lost the shard writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from covey.core import Reason, StorageError
from covey.core.runtime import to_plain

#: where an execution's journal lives in the state store
JOURNAL_PREFIX = "covey.workflow/"
#: the journal format this code writes (and the newest it reads)
FORMAT = 1

#: entry statuses
DONE = "done"
FAILED = "failed"
WAITING = "waiting"
REGISTERED = "registered"


def journal_key(workflow_id: str) -> str:
    """The state-store key of ``workflow_id``'s journal."""
    return f"{JOURNAL_PREFIX}{workflow_id}"


@dataclass
class Entry:
    """One journaled operation.

    ``kind``: step, compensate, finalizer, sleep, recv, event, awakeable, child,
    start_child, now, uuid, random, patch. ``status``: done, failed, waiting (a
    durable wait under way), registered (a step whose compensation was recorded
    before it ran, not finished yet). ``result`` is plain data; ``error`` holds
    ``type`` and ``message`` of a failure; ``until`` the deadline of a wait.
    """

    key: str
    kind: str
    status: str
    result: Any = None
    error: dict[str, str] | None = None
    at: float | None = None
    until: float | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.key, "t": self.kind, "s": self.status}
        if self.result is not None:
            out["r"] = self.result
        if self.error is not None:
            out["e"] = self.error
        if self.at is not None:
            out["a"] = self.at
        if self.until is not None:
            out["u"] = self.until
        return out

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> Entry:
        return cls(raw["k"], raw["t"], raw["s"], raw.get("r"), raw.get("e"), raw.get("a"),
                   raw.get("u"))


@dataclass
class Journal:
    """An execution's journal, mailbox and flags (see the module docstring)."""

    name: str
    version: int
    start_id: int
    created_at: float
    entries: dict[int, Entry] = field(default_factory=dict)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    events: dict[str, Any] = field(default_factory=dict)
    cancel: bool = False
    children: list[str] = field(default_factory=list)
    state: str = "running"
    waiting_for: str | None = None
    updated_at: float | None = None
    #: the outcome of an ended execution (the start message's reply body)
    outcome: dict[str, Any] | None = None

    def encode(self) -> bytes:
        raw: dict[str, Any] = {
            "f": FORMAT, "n": self.name, "v": self.version, "i": self.start_id,
            "c": self.created_at, "j": {seq: e.encode() for seq, e in self.entries.items()},
            "st": self.state,
        }
        if self.inbox:
            raw["in"] = self.inbox
        if self.seen:
            raw["sn"] = self.seen
        if self.events:
            raw["ev"] = self.events
        if self.cancel:
            raw["x"] = True
        if self.children:
            raw["ch"] = self.children
        if self.waiting_for is not None:
            raw["w"] = self.waiting_for
        if self.updated_at is not None:
            raw["u"] = self.updated_at
        if self.outcome is not None:
            raw["o"] = self.outcome
        return msgpack.packb(raw, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes, key: str) -> Journal:
        """A stored journal.

        Raises:
            StorageError: ``storage_corrupt`` for data that is no journal (or of
                a newer format than this code reads); it is left as it is.
        """
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if raw.get("f", 0) > FORMAT:
                raise StorageError(
                    f"the journal {key!r} has format {raw.get('f')}, newer than this "
                    f"code reads ({FORMAT}); upgrade this runner", reason=Reason.STORAGE_CORRUPT)
            return cls(
                name=raw["n"], version=int(raw["v"]), start_id=int(raw["i"]),
                created_at=float(raw["c"]),
                entries={int(seq): Entry.decode(e) for seq, e in raw["j"].items()},
                inbox=list(raw.get("in", ())), seen=list(raw.get("sn", ())),
                events=dict(raw.get("ev", {})), cancel=bool(raw.get("x", False)),
                children=list(raw.get("ch", ())), state=str(raw.get("st", "running")),
                waiting_for=raw.get("w"), updated_at=raw.get("u"), outcome=raw.get("o"))
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"the journal {key!r} cannot be read: {exc}",
                               reason=Reason.STORAGE_CORRUPT, key=key) from exc


def plain(value: Any) -> Any:
    """``value`` as the plain data a journal stores."""
    return to_plain(value)
