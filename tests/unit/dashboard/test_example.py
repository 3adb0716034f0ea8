"""examples/dashboard_app.py: the dashboard mounted in FastAPI behind a bearer token.

Run in a subprocess of its own (its cluster is module-level state), driven as
uvicorn drives it: lifespan, then requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

DRIVER = """
import asyncio, json
import httpx
from examples.dashboard_app import app, cluster

async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            out = {}
            job_id = int((await http.post("/receipts/bad-1")).json()["job_id"])
            for _ in range(500):
                if (await cluster.jobs.status(job_id)).state == "dead":
                    break
                await asyncio.sleep(0.02)
            ops = {"authorization": "Bearer s3cret"}
            out["refused"] = (await http.get("/ops/jobs")).status_code
            jobs = await http.get("/ops/jobs", headers=ops)
            out["jobs"] = [jobs.status_code, f'job-row-{job_id}' in jobs.text,
                           f'retry-{job_id}' in jobs.text, 'href="/ops/runners"' in jobs.text]
            job = await http.get(f"/ops/jobs/{job_id}", headers=ops)
            out["job"] = [job.status_code, 'data-testid="job-state">dead<' in job.text,
                          "no mail server for bad-1" in job.text]
            out["runners"] = (await http.get("/ops/runners", headers=ops)).status_code
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_example_mounts_the_dashboard_behind_its_bearer_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "COVEY_SHARDS": "4",
                "OPS_TOKENS": "alice:s3cret",
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"),
                                               env.get("PYTHONPATH", "")])})
    done = subprocess.run([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"refused": 403, "jobs": [200, True, True, True], "job": [200, True, True],
                   "runners": 200}
