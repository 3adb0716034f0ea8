"""The metrics a runner exports change with what it does."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from covey.core import EntityError
from covey.testing import TestCluster

from ._entities import Account, Deposit


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_handled_failed_latency_entities_shards_runners() -> None:
    handled = sample("covey_messages_handled_total", entity_type="Account", kind="persisted")
    failed = sample("covey_messages_failed_total", entity_type="Account", kind="volatile")
    timed = sample("covey_handler_seconds_count", entity_type="Account")
    async with TestCluster(Account, runners=1) as tc:
        account = tc.client(Account, "m1")
        await account.deposit(Deposit(txn_id="m1-1", amount=1))
        await account.deposit(Deposit(txn_id="m1-2", amount=1))
        with pytest.raises(EntityError):
            await account.fail("x")
        assert sample("covey_messages_handled_total", entity_type="Account",
                      kind="persisted") == handled + 2
        assert sample("covey_messages_failed_total", entity_type="Account",
                      kind="volatile") == failed + 1
        assert sample("covey_handler_seconds_count", entity_type="Account") == timed + 3
        assert sample("covey_entities_active", entity_type="Account") >= 1
        assert sample("covey_shards_owned") == 30
        assert sample("covey_runners_live") == 1
