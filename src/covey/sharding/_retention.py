"""Retention: processed messages are deleted once older than the retention.

One runner purges for the whole store: the owner of the shard of
``covey.retention``. A single purger walks one index range per batch
(``MessageStorage.purge``) instead of every owner scanning its shards, needs no
fencing (a processed message is final; deleting it twice deletes nothing) and
keeps the purge load on the database to one connection cluster-wide. When the
shard moves, the purge moves with it; a pass stops between batches once the
shard is gone.

Every ``purge_interval`` the purger deletes, in batches of ``purge_batch``, the
processed messages completed more than ``retention`` ago, yielding between
batches, until a batch comes back short. Error replies of the entity types it is
told to keep (dead-lettered jobs) stay until an operator retries or purges them.
A failed pass is logged and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection

from covey.core import Clock, ShardId, StorageOptions, metrics
from covey.core.runtime import shard_for
from covey.sharding._sharding import Sharding
from covey.storage import MessageStorage, Storage

log = logging.getLogger("covey.retention")

#: The name whose shard's owner purges (``shard_for`` of it, default group).
RETENTION_KEY = "covey.retention"


async def purge_processed(
    messages: MessageStorage,
    before: float,
    *,
    batch: int,
    keep_errors_of: Collection[str] = (),
    active: Callable[[], bool] = lambda: True,
) -> int:
    """One purge pass: batches of at most ``batch`` rows until one comes back short.

    Counts each batch in ``covey_messages_purged_total`` as it commits, so a pass
    that fails half-way still reports what it deleted. Stops early when
    ``active()`` turns false (the purger lost its shard). Returns the rows deleted.
    """
    total = 0
    while True:
        deleted = await messages.purge(before, limit=batch, keep_errors_of=keep_errors_of)
        metrics.MESSAGES_PURGED.inc(deleted)
        total += deleted
        if deleted < batch or not active():
            return total
        await asyncio.sleep(0)  # let the runner's own work in between batches


class RetentionPurger:
    """The purge loop of one runner; it works only while it owns the retention shard.

    Args:
        storage: the store to purge.
        sharding: this runner's shard ownership.
        clock: the time source of the interval and of the cut-off.
        options: ``retention``, ``purge_interval`` and ``purge_batch``.
        shards: shards per group (to find the retention shard).
        keep_errors_of: entity types whose error replies are kept (dead letters).
    """

    def __init__(self, storage: Storage, sharding: Sharding, clock: Clock,
                 options: StorageOptions, shards: int,
                 keep_errors_of: Collection[str] = ()) -> None:
        self._storage = storage
        self._sharding = sharding
        self._clock = clock
        self._options = options
        self._keep = tuple(keep_errors_of)
        self.shard: ShardId = shard_for(RETENTION_KEY, shards)

    def _owned(self) -> bool:
        return self.shard in self._sharding.owned

    async def run(self) -> None:
        """Purge every ``purge_interval`` while this runner owns the shard; never raises."""
        if math.isinf(self._options.retention):
            log.info("retention is infinite: processed messages are kept")
            return
        while True:
            # first wait, then purge: a starting runner has better things to do
            await self._clock.sleep(self._options.purge_interval)
            if self._owned():
                await self.purge_once()

    async def purge_once(self) -> int:
        """One pass now; a failure is logged (the next interval tries again), 0 returned."""
        before = max(self._clock.now() - self._options.retention, 0.0)
        try:
            deleted = await purge_processed(
                self._storage.messages, before, batch=self._options.purge_batch,
                keep_errors_of=self._keep, active=self._owned)
        except Exception as exc:  # the runner must keep serving whatever storage says
            log.warning("purging processed messages failed (%s); retrying in %.0f s",
                        exc, self._options.purge_interval, exc_info=True)
            return 0
        if deleted:
            log.info("purged %d processed messages completed before %.3f", deleted, before)
        return deleted
