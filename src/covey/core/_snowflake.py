"""Snowflake ids: 64-bit, time-ordered, unique across runners.

Layout (most significant first): 41 bits of milliseconds since 2025-01-01T00:00Z,
10 bits of machine id (given to a runner at registration), 12 bits of sequence.
A generator is monotonic even when the wall clock steps back, and borrows the
next millisecond when 4096 ids are asked for within one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from covey.core._errors import ClusterError, Reason

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MACHINE_BITS = 10
SEQUENCE_BITS = 12
MAX_MACHINE_ID = (1 << MACHINE_BITS) - 1
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1


@dataclass(frozen=True, slots=True)
class SnowflakeParts:
    """The fields of a snowflake id."""

    timestamp_ms: int
    machine_id: int
    sequence: int


def parse_snowflake(value: int) -> SnowflakeParts:
    """Split a snowflake into its time (Unix ms), machine id and sequence."""
    return SnowflakeParts(
        timestamp_ms=(value >> (MACHINE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
        machine_id=(value >> SEQUENCE_BITS) & MAX_MACHINE_ID,
        sequence=value & _SEQUENCE_MASK,
    )


class SnowflakeGenerator:
    """Makes snowflake ids for one machine id. Safe to share between threads."""

    def __init__(
        self, machine_id: int, *, now_ms: Callable[[], int] | None = None
    ) -> None:
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = 0
        self._sequence = 0
        self._machine_id = 0
        self.machine_id = machine_id

    @property
    def machine_id(self) -> int:
        """The machine id stamped into every new id."""
        return self._machine_id

    @machine_id.setter
    def machine_id(self, value: int) -> None:
        if not 0 <= value <= MAX_MACHINE_ID:
            raise ClusterError(
                f"machine id must be within 0..{MAX_MACHINE_ID}, got {value}",
                reason=Reason.INVALID_ARGUMENT,
            )
        self._machine_id = value

    def next_id(self) -> int:
        """A new id, greater than every id this generator made before."""
        with self._lock:
            now = max(self._now_ms() - EPOCH_MS, 0)
            if now > self._last_ms:
                self._last_ms = now
                self._sequence = 0
            else:
                self._sequence += 1
                if self._sequence > _SEQUENCE_MASK:
                    self._last_ms += 1  # borrow the next millisecond
                    self._sequence = 0
            return (
                (self._last_ms << (MACHINE_BITS + SEQUENCE_BITS))
                | (self._machine_id << SEQUENCE_BITS)
                | self._sequence
            )
