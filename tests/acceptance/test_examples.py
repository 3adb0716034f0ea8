"""The demo runs end to end: three runner processes, one SIGKILLed, every deposit once.

Runs ``examples/demo.py`` exactly as ``make demo`` does, with a smaller workload
and a work directory of its own (so it does not touch ``.demo/``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.acceptance  # starts real runner processes


def test_demo_passes_with_a_runner_killed_half_way(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"),
         "--deposits", "300", "--accounts", "10", "--workdir", str(tmp_path / "demo")],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "PASS: all 300 deposits applied exactly once across a runner crash" in output
    assert "SIGKILL runner-" in output
    assert "3 runners, 300 shards, 10 accounts" in output
