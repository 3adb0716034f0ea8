"""The jobs example runs and shows what the docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_jobs_example() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "jobs.py")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "submitted: sent to ann@example.com on attempt 1",
        "retried: sent to flaky@example.com on attempt 3",
        "dead: reason job_dead",
        "dead job: state dead after 3 attempts, last error ConnectionError: "
        "smtp down for down@example.com (attempt 3)",
        "dead-letter holds 1 job(s)",
        "retried from the dead-letter: sent to down@example.com on attempt 1",
        "dead-letter holds 0 job(s)",
        "dedupe: 5 submits, 1 job, 1 run",
        "scheduled job is scheduled",
        "cancelled before it ran: cancelled",
        "long job is running",
        "cancelled while running: cancelled, handler cleaned up: True",
        "later@example.com ran: False",
    ]
    assert "dead after attempt 3" in result.stderr  # the runner logs the dead-letter
