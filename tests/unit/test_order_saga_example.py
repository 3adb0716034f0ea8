"""examples/order_saga.py runs and shows what docs/workflows.md says: a declined card
releases the stock, an approval signal continues a waiting order, a 3-day ``recv``
times out across restarts of the cluster, and every step's function ran once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_order_saga_example() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "order_saga.py")],
                            capture_output=True, text=True, timeout=90, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "day 0: o-1 completed (ch-1, parcel-o-1)",
        "day 0: o-2 compensated (CardDeclined: card 4000-0002 declined)",
        "day 0: o-3 waiting, awaiting approval (recv approval)",
        "day 0: o-4 waiting, awaiting approval (recv approval)",
        "day 0: 1 book in stock; the cluster stops",
        "day 1: o-3 completed (ch-2, parcel-o-3), approved by dana",
        "day 1: o-4 waiting",
        "day 3: o-4 compensated (NotApproved: 800 needs an approval; none came in 3 days)",
        "stock: 5 book (10 - 2 for o-1 - 3 for o-3); charged 2, refunded 0",
        # o-2's refund ran although its charge failed (registered before it); o-3 and
        # o-4 ran again on later days, yet their completed steps did not
        "step runs: reserve 4, charge 3, ship 2, refund 1, release 2",
    ]
