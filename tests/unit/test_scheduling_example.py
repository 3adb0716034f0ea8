"""The scheduling example runs and shows what the docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scheduling_example() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "scheduling.py")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "singleton healthy after the kill: True" in out
    assert "duplicates: 0" in out
    ticks = int(out.split("cron ticks: ")[1].split(",")[0])
    assert 3 <= ticks <= 5
    lives = [line for line in out.splitlines() if line.startswith("singleton life")]
    assert len(lives) >= 2  # it may also move while the three runners join
    assert int(lives[-1].rsplit(" ", 1)[1]) >= 10  # after the kill it resumed the count
