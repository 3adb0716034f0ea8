"""Test covey applications without a database or sockets.

:class:`TestCluster` runs N runners in one event loop on in-memory storage and
the in-process transport, with real serialization, so entity code is tested
exactly as it runs in production::

    async with TestCluster(Account, runners=3) as cluster:
        account = cluster.client(Account, "acct-1")
        assert await account.deposit(Deposit(txn_id="t1", amount=5)) == 5
        await cluster.kill(cluster.owner_index(Account, "acct-1"))   # crash its runner
        assert await account.balance_of() == 0                        # volatile state is gone

:func:`replay` runs a workflow's current code over a journal recorded from a real
execution, so a change that would strand in-flight executions fails in CI.
"""

from covey.testing._cluster import TestCluster
from covey.workflows.runtime import ReplayReport, replay

__all__ = ["ReplayReport", "TestCluster", "replay"]
