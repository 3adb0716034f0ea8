"""examples/orders.py runs and shows what docs/events.md says: each order placed once,
billed once and emailed once, on the runners that own the keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_orders_example() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "orders.py")],
                            capture_output=True, text=True, timeout=90, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "POST /orders/o-1 -> 200 placed",
        "POST /orders/o-2 -> 200 placed",
        "POST /orders/o-3 -> 200 placed",
        "POST /orders/o-1 again -> 200 already placed",
    ]
    assert lines[4:7] == [f"o-{n}: billed 1x, emailed 1x" for n in (1, 2, 3)]
    assert lines[7].startswith("handled on ") and lines[7].endswith("events handled: 6")
