"""examples/fastapi_app.py answers as its docstring says (one process, SQLite).

The two-pod PostgreSQL run is tests/acceptance/test_pods.py; this one runs
everywhere. The app is imported in a subprocess of its own (its cluster is
module-level state) and driven as uvicorn drives it: lifespan, then requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import asyncio, json
import httpx
from examples.fastapi_app import app

async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            out = {}
            r = await http.post("/accounts/a1/deposits", json={"txn_id": "t1", "amount": 5})
            out["deposit"] = [r.status_code, r.json()]
            r = await http.post("/accounts/a1/deposits", json={"txn_id": "t1", "amount": 5})
            out["again"] = [r.status_code, r.json()]
            r = await http.post("/accounts/a1/deposits", json={"txn_id": "t1", "amount": 6})
            out["conflict"] = [r.status_code, r.headers["content-type"], r.json()["reason"]]
            r = await http.get("/accounts/a1")
            out["balance"] = [r.status_code, r.json()]
            r = await http.post("/accounts/a1/receipts")
            job_id = r.json()["job_id"]
            out["submitted"] = [r.status_code, type(job_id).__name__]
            for _ in range(200):
                r = await http.get(f"/jobs/{job_id}")
                if r.json()["state"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            out["job"] = [r.status_code, r.json()["state"], r.json()["result"],
                          r.json()["job_id"] == job_id]
            r = await http.get("/jobs/123")
            out["missing"] = [r.status_code, r.json()["reason"]]
            for path in ("/livez", "/readyz", "/health", "/metrics"):
                r = await http.get(path)
                out[path] = [r.status_code, r.headers["content-type"].split(";")[0]]
            print(json.dumps(out))

asyncio.run(main())
"""


def test_the_example_app_serves_accounts_jobs_errors_and_probes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update(COVEY_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["deposit"] == [200, {"account": "a1", "balance": 5}]
    assert out["again"] == [200, {"account": "a1", "balance": 5}]  # deduplicated
    assert out["conflict"] == [409, "application/problem+json", "idempotency_conflict"]
    assert out["balance"] == [200, {"account": "a1", "balance": 5}]
    assert out["submitted"] == [202, "str"]  # a 64-bit id travels as a string
    assert out["job"] == [200, "succeeded", "receipt for a1: balance 5", True]
    assert out["missing"] == [404, "job_not_found"]
    assert out["/livez"] == [200, "application/health+json"]
    assert out["/readyz"] == [200, "application/health+json"]
    assert out["/health"] == [200, "application/health+json"]
    assert out["/metrics"] == [200, "text/plain"]
