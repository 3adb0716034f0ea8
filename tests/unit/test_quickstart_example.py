"""The quickstart example runs as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_prints_what_the_docs_say(tmp_path: Path) -> None:
    env = {**os.environ, "COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "after t1: 5",
        "after t2: 12",
        "t1 again: 5 (deduplicated)",
        "balance : 12",
        "bad input: payload_invalid ['amount']",
    ]
