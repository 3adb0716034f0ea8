"""Stream retention: the items, routes and mails that are due go, on every runner.

Not a singleton (it would show in every application's singleton listing): each
runner trims every ``TRIM_EVERY`` seconds, with jitter; the deletes are
idempotent, so two runners trimming at once only repeat a little work.
"""

from __future__ import annotations

import logging
import random

from covey.core import Clock, RealtimeOptions
from covey.storage import StreamStore

log = logging.getLogger("covey.realtime")

#: seconds between two trims of one runner
TRIM_EVERY = 30.0
#: rows deleted per statement
TRIM_BATCH = 10_000


class StreamTrimmer:
    """Trims ``storage.streams`` (see the module docstring)."""

    def __init__(self, store: StreamStore, clock: Clock, options: RealtimeOptions) -> None:
        self._store = store
        self._clock = clock
        self._options = options

    async def run(self) -> None:
        """Trim until cancelled; a failing round is logged and tried again."""
        while True:
            await self._clock.sleep(TRIM_EVERY * random.uniform(0.5, 1.5))
            try:
                await self.trim()
            except Exception:
                log.warning("trimming the streams failed; trying again", exc_info=True)

    async def trim(self) -> int:
        """One round; returns the rows deleted."""
        now = self._clock.now()
        deleted = 0
        while True:
            n = await self._store.trim(keep=self._options.stream_keep,
                                       before=now - self._options.stream_retention,
                                       limit=TRIM_BATCH)
            deleted += n
            if n < TRIM_BATCH:
                break
        deleted += await self._store.purge_routes(now=now, limit=TRIM_BATCH)
        deleted += await self._store.purge_mail(now=now, limit=TRIM_BATCH)
        return deleted
