"""The reconnect schedule of covey's clients: at once, then capped exponential
backoff with full jitter (250 ms * 2**n, capped, uniformly random below it)."""

from __future__ import annotations

import random

#: the first retry's ceiling (seconds)
BASE_DELAY = 0.25
#: the default cap (seconds)
DEFAULT_CAP = 5.0


class Backoff:
    """Delays between reconnect attempts.

    The first attempt after a drop is immediate (delay 0); the n-th retry after
    that waits ``uniform(0, min(cap, base * 2**n))``. :meth:`reset` after a
    connection that worked.
    """

    def __init__(self, *, cap: float = DEFAULT_CAP, base: float = BASE_DELAY,
                 rng: random.Random | None = None) -> None:
        if not cap > 0 or not base > 0:
            raise ValueError("backoff cap and base must be positive")
        self.cap = cap
        self.base = base
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (0 for the first)."""
        attempt = self.attempt
        self.attempt += 1
        if attempt == 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 32))
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """The connection worked: the next drop reconnects at once again."""
        self.attempt = 0
