"""The registered runners as operators see them: state, assigned shards, heartbeat age.

Shared by the dashboard's runners view and ``covey runners``. The shards shown
are those the assignment gives each serving runner: every runner computes the
same assignment from the same live set (``docs/architecture.md``), so this is
what each one holds once rebalancing settles.
"""

from __future__ import annotations

from dataclasses import dataclass

from covey.core import CoveyConfig, ShardId
from covey.sharding.runtime import assign
from covey.storage import RunnerInfo

#: registrations older than this are deleted by the next runner start anyway
#: (the machine-id expiry of every backend), so they are not worth listing
HORIZON = 300.0


@dataclass(frozen=True)
class RunnerRow:
    """One registered runner.

    ``state``: ``serving`` (heartbeat fresh, serves shard groups), ``client``
    (a client-only member: routes calls, hosts nothing), ``stale`` (missed
    heartbeats for longer than ``COVEY_SHARDING_RUNNER_TTL``: dead or paused; it
    is expired by the next membership read of a live runner).
    """

    info: RunnerInfo
    state: str
    shards: tuple[ShardId, ...]
    heartbeat_age: float


def runner_rows(runners: list[RunnerInfo], config: CoveyConfig, now: float) -> list[RunnerRow]:
    """State and assigned shards of each registered runner (by address)."""
    ttl = config.sharding.runner_ttl

    def state(r: RunnerInfo) -> str:
        if r.last_heartbeat < now - ttl:
            return "stale"
        return "serving" if r.weight > 0 and r.groups else "client"

    serving = [r for r in runners if state(r) == "serving"]
    groups = sorted({g for r in serving for g in r.groups})
    assignment = assign([ShardId(g, i) for g in groups for i in range(1, config.shards + 1)],
                        serving)
    rows = []
    for r in sorted(runners, key=lambda r: str(r.address)):
        shards = tuple(sorted(s for s, owner in assignment.items() if owner == r.address))
        rows.append(RunnerRow(r, state(r), shards, max(0.0, now - r.last_heartbeat)))
    return rows


def shard_ranges(shards: tuple[ShardId, ...], width: int = 48) -> str:
    """``default:1-4,9`` (per group, consecutive numbers as ranges), shortened to ``width``."""
    parts: list[str] = []
    by_group: dict[str, list[int]] = {}
    for s in shards:
        by_group.setdefault(s.group, []).append(s.id)
    for group, numbers in by_group.items():
        spans: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            if n is not None:
                start = prev = n
        parts.append(f"{group}:{','.join(spans)}")
    text = " ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"
