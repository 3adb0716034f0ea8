"""Refused runner connections: every one counted, few logged.

Anyone who can reach the runner port can open connections that send garbage,
guess the cluster secret or say nothing at all. Each one must be visible to an
operator, but a port scanner or a misconfigured peer retrying in a loop must not
flood the log. So every refusal increments ``covey_transport_rejected_total``
(labelled by reason), while the log gets the first refusal per peer host and
reason in full, then at most one summary line with a count per window.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from covey.core import Clock, SystemClock
from covey.core.metrics import TRANSPORT_REJECTED
from covey.sharding.transport._protocol import logger

#: How many (host, reason) pairs are tracked; beyond this, new hosts share one
#: entry, so a flood from many addresses cannot grow memory without bound.
MAX_TRACKED = 1024
_OTHER_HOSTS = "other hosts"


@dataclass(slots=True)
class _Window:
    """What was held back for one (host, reason) since ``started``."""

    started: float
    held: int = 0


class RejectionLog:
    """Counts refusals and logs them rate-limited per peer host and reason.

    Args:
        clock: the time source for the windows (a :class:`~covey.core.TestClock`
            in tests); the real clock by default.
        window: seconds between summary lines for one host and reason.
    """

    def __init__(self, clock: Clock | None = None, *, window: float = 60.0) -> None:
        self._clock = clock or SystemClock()
        self.window = window
        self._windows: dict[tuple[str, str], _Window] = {}
        self._timer: asyncio.TimerHandle | None = None

    def record(self, host: str, reason: str, message: str, *, counted: bool = True) -> None:
        """One refusal (or, with ``counted=False``, one odd event) from ``host``.

        Args:
            host: the peer's IP address (not the port: each connection has its own).
            reason: a short stable label, the metric's ``reason``.
            message: the full log line for the first one of a window.
            counted: whether to count it in ``covey_transport_rejected_total``.
        """
        if counted:
            TRANSPORT_REJECTED.labels(reason=reason).inc()
        now = self._clock.monotonic()
        key = (host, reason)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= MAX_TRACKED:
            self.flush()
            if len(self._windows) >= MAX_TRACKED:
                key = (_OTHER_HOSTS, reason)
                window = self._windows.get(key)
        if window is not None:
            if now - window.started < self.window:
                window.held += 1
                self._arm()
                return
            self._summarise(key, window, now)
        self._windows[key] = _Window(now)
        logger.warning("%s [%s]; more of these from %s are summarised every %.0fs",
                       message, reason, key[0], self.window)

    def flush(self, *, everything: bool = False) -> None:
        """Log a summary for each window that has ended (or for all of them)."""
        now = self._clock.monotonic()
        for key, window in list(self._windows.items()):
            if everything or now - window.started >= self.window:
                self._summarise(key, window, now)

    def close(self) -> None:
        """Stop the summary timer and log what is still held back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush(everything=True)

    def _summarise(self, key: tuple[str, str], window: _Window, now: float) -> None:
        del self._windows[key]
        if window.held:
            logger.warning("%d more like this from %s in the last %.0fs [%s]",
                           window.held, key[0], now - window.started, key[1])

    def _arm(self) -> None:
        # One timer for all windows, and only while something is held back, so
        # the count of an attack that stopped is still logged (not just at close).
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if any(window.held for window in self._windows.values()):
            self._arm()
