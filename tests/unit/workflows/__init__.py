"""Workflow unit tests: the in-memory TestCluster, effects counted in plain lists.

Helpers shared by the modules of this package live here.
"""

from __future__ import annotations

from covey.core.runtime import shard_for
from covey.testing import TestCluster


def owner_index(tc: TestCluster, workflow_id: str) -> int:
    """Which runner (index into ``tc.runners``) owns ``workflow_id``'s shard now."""
    shard = shard_for(workflow_id, tc.config.shards)
    owners = [i for i, runner in enumerate(tc.runners) if shard in runner.sharding.owned]
    assert len(owners) == 1, f"{shard} is owned by runners {owners}"
    return owners[0]
