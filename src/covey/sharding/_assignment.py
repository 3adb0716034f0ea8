"""Shard assignment: which runner should own which shard.

Every runner computes the assignment from the same inputs (the live runners as
storage lists them) with the same deterministic function, so they agree without
a coordinator. The function is consistent hashing with bounded load: each runner
puts ``VNODES * weight`` points on a ring; a shard goes to the first runner
clockwise from the shard's own point that still has room, where room is the
runner's weighted share of the group's shards, rounded up. Adding or removing a
runner moves only about its share of shards; no runner gets more than its share.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from covey.core import RunnerAddress, ShardId
from covey.core.runtime import stable_hash
from covey.storage import RunnerInfo

VNODES = 128


def _ring(runners: Sequence[RunnerInfo]) -> tuple[list[int], list[RunnerAddress]]:
    points: list[tuple[int, str, RunnerAddress]] = []
    for runner in runners:
        key = str(runner.address)
        for i in range(VNODES * runner.weight):
            points.append((stable_hash(f"{key}#{i}"), key, runner.address))
    points.sort()
    return [p[0] for p in points], [p[2] for p in points]


def assign(
    shards: Iterable[ShardId], runners: Sequence[RunnerInfo]
) -> dict[ShardId, RunnerAddress]:
    """Map every shard to the runner that should own it.

    Runners serve the groups listed in ``RunnerInfo.groups``; a runner with
    weight 0 serves nothing. Shards of a group no runner serves are left out.
    """
    by_group: dict[str, list[ShardId]] = {}
    for shard in shards:
        by_group.setdefault(shard.group, []).append(shard)
    out: dict[ShardId, RunnerAddress] = {}
    for group, group_shards in sorted(by_group.items()):
        eligible = sorted(
            (r for r in runners if group in r.groups and r.weight > 0), key=lambda r: r.address
        )
        if not eligible:
            continue
        total = sum(r.weight for r in eligible)
        capacity = {
            r.address: math.ceil(len(group_shards) * r.weight / total) for r in eligible
        }
        load = dict.fromkeys(capacity, 0)
        hashes, owners = _ring(eligible)
        for shard in sorted(group_shards):
            start = bisect.bisect_left(hashes, stable_hash(str(shard)))
            for step in range(len(hashes)):
                owner = owners[(start + step) % len(hashes)]
                if load[owner] < capacity[owner]:
                    load[owner] += 1
                    out[shard] = owner
                    break
    return out


def shards_of(
    assignment: dict[ShardId, RunnerAddress], runner: RunnerAddress
) -> set[ShardId]:
    """The shards ``assignment`` gives to ``runner``."""
    return {shard for shard, owner in assignment.items() if owner == runner}
