"""What every backend shares: the lifecycle and the embedded migration files."""

from __future__ import annotations

import re
from importlib import resources
from typing import Self

from covey.core import MigrationError, ShardCountMismatch

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class StorageLifecycle:
    """``async with`` support on top of ``start()`` / ``close()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def migrations(package: str) -> list[tuple[int, str, str]]:
    """The numbered ``.sql`` migrations of a backend package, in order.

    Returns ``(version, filename, sql)``; versions must run 1, 2, 3… without gaps.
    """
    found: list[tuple[int, str, str]] = []
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise MigrationError(f"migration numbering has a gap or duplicate at {name}")
    return found


def check_shards(recorded: int, configured: int, location: str) -> None:
    """Refuse to run with another shard count than the one the cluster started with."""
    if recorded != configured:
        raise ShardCountMismatch(
            f"{location} was created with {recorded} shards per group, but this process "
            f"is configured with {configured} (COVEY_SHARDS). Changing the shard count of "
            f"a cluster would move every entity; run with COVEY_SHARDS={recorded}.",
            recorded=recorded,
            configured=configured,
        )
