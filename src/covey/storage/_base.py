"""What every backend shares: the lifecycle and the embedded migration files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Self

from covey.core import MigrationError, ShardCountMismatch

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

#: How an empty database gets its schema: ``schema.sql`` at once, or every
#: migration in order (the two must give the same schema).
InstallFrom = Literal["schema", "migrations"]


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


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """What ``start()`` runs on a schema at some version, in one transaction.

    Attributes:
        scripts: ``(name, sql)`` to run in order.
        applied: ``(version, name)`` to record as applied.
        version: the schema version afterwards.
    """

    scripts: list[tuple[str, str]]
    applied: list[tuple[int, str]]
    version: int


def plan_migrations(package: str, current: int, install_from: InstallFrom,
                    location: str) -> MigrationPlan:
    """The migrations of ``package`` a schema at version ``current`` still needs.

    An empty schema (version 0) gets ``schema.sql`` at once when ``install_from``
    is ``"schema"`` (every migration is then recorded as applied), else every
    migration in order; the two give the same schema (a test compares them).

    Raises:
        MigrationError: the schema is newer than this code knows.
    """
    available = migrations(package)
    latest = available[-1][0] if available else 0
    if current > latest:
        raise MigrationError(f"{location} is at schema version {current}, newer than this "
                             f"covey knows ({latest}); upgrade covey")
    todo = [(version, name, sql) for version, name, sql in available if version > current]
    if current == 0 and install_from == "schema" and todo:
        scripts = [("schema.sql",
                    resources.files(package).joinpath("schema.sql").read_text("utf-8"))]
    else:
        scripts = [(name, sql) for _, name, sql in todo]
    return MigrationPlan(scripts, [(version, name) for version, name, _ in todo],
                         max(current, latest))


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
