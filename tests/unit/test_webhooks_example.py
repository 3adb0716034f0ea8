"""examples/webhooks.py runs and shows what docs/webhooks.md says: ``invoice.paid``
delivered, signed, to a receiver that verifies it, and recorded there once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_webhooks_example(tmp_path: Path) -> None:
    # no COVEY_* settings: the embedded SQLite default, covey.db in tmp_path
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "webhooks.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "delivered msg_in_1001 on attempt 1: HTTP 200",
        "receiver got: msg_in_1001 invoice.paid "
        "{'invoice_id': 'in_1001', 'amount_cents': 4200, 'currency': 'EUR'}",
        "sent again: duplicate True same delivery True",
        "receiver on a retry: duplicate - rows stored: 1",
    ]
    assert (tmp_path / "covey.db").exists()  # it ran on the default, in the current folder
