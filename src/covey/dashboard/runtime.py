"""What ``covey runners`` shares with the dashboard (not for applications)."""

from covey.dashboard._runners import HORIZON, RunnerRow, runner_rows, shard_ranges

__all__ = ["HORIZON", "RunnerRow", "runner_rows", "shard_ranges"]
