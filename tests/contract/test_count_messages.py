"""MessageStorage.count_messages without the processed state, on every backend.

The jobs gauges (backlog, dead letters) are sampled every few seconds; counting
the successful replies too would read every processed row of the type each time,
a cost that grows with the store. ``with_processed=False`` leaves them out.
"""

from __future__ import annotations

import pytest

from covey.core import ClusterError, Reason
from covey.storage import Fence, Reply, Storage

from ._helpers import RUNNER_A, S1, msg

JOBS = "covey.Job"


async def _seed(storage: Storage) -> None:
    held = await storage.runners.acquire(RUNNER_A, [S1])
    fence = Fence(S1, held[S1])
    done = [msg(f"d{n}", entity_type=JOBS, tag="mail") for n in range(3)]
    dead = [msg(f"x{n}", entity_type=JOBS, tag="mail") for n in range(2)]
    queued = [msg(f"q{n}", entity_type=JOBS, tag="mail", priority=5) for n in range(4)]
    other = msg("o1", entity_type="Account", tag="mail")
    await storage.messages.save_requests([*done, *dead, *queued, other])
    for m in done:
        await storage.messages.save_reply(Reply(m.id, b"ok"), fence)
    for m in dead:
        await storage.messages.save_reply(Reply(m.id, b"no", True), fence)


async def test_counting_without_processed_leaves_out_only_the_successes(
    storage: Storage,
) -> None:
    await _seed(storage)
    everything = await storage.messages.count_messages(JOBS)
    assert everything == [("mail", 0, "error", 2), ("mail", 0, "processed", 3),
                          ("mail", 5, "unprocessed", 4)]
    assert await storage.messages.count_messages(JOBS, with_processed=False) == [
        ("mail", 0, "error", 2), ("mail", 5, "unprocessed", 4)]


@pytest.mark.parametrize("value", ["no", 0, None])
async def test_a_non_bool_with_processed_is_refused(storage: Storage, value: object) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.messages.count_messages(JOBS, with_processed=value)  # type: ignore[arg-type]
    assert info.value.reason is Reason.INVALID_ARGUMENT
