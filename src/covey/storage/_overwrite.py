"""Write a state key whatever its current version (a runner's own report)."""

from __future__ import annotations

from covey.core import VersionConflict
from covey.storage._contracts import StateStore


async def overwrite(state: StateStore, key: str, value: bytes, *, attempts: int = 3) -> bool:
    """Set ``key`` to ``value`` over whatever version is stored; ``False`` when other
    writers won ``attempts`` times in a row (the caller's next report tries again)."""
    for _ in range(attempts):
        current = await state.get(key)
        try:
            await state.set(key, value,
                            expected_version=None if current is None else current.version)
            return True
        except VersionConflict:
            continue
    return False
