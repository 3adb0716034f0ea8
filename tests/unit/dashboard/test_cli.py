"""``covey dashboard``: refuses to serve without authentication; Basic auth with a token."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from covey.cli._dashboard import basic_user, with_basic_auth
from covey.cli._main import main

from .conftest import Shop

ROOT = Path(__file__).resolve().parents[3]


def test_it_refuses_to_serve_without_a_token_or_dev_mode() -> None:
    runner = CliRunner()
    env = {"COVEY_DASHBOARD_TOKEN": ""}
    bare = runner.invoke(main, ["dashboard"], env={k: None for k in env})
    both = runner.invoke(main, ["dashboard", "--dev", "--token", "t"])
    open_dev = runner.invoke(main, ["dashboard", "--dev", "--host", "0.0.0.0"])
    assert bare.exit_code == 2 and "--token" in bare.output and "--dev" in bare.output
    assert both.exit_code == 2 and "not both" in both.output
    assert open_dev.exit_code == 2 and "loopback" in open_dev.output


def basic(user: str, password: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {value}"}


def test_basic_auth_names_the_operator_only_with_the_right_token() -> None:
    assert basic_user(basic("alice", "s3cret"), "s3cret") == "alice"
    assert basic_user(basic("alice", "wrong"), "s3cret") is None
    assert basic_user({"authorization": "Basic !!!"}, "s3cret") is None
    assert basic_user({}, "s3cret") is None


async def test_the_token_guard_prompts_for_credentials_and_passes_the_operator(
        shop: Shop) -> None:
    app = with_basic_auth(shop.cluster.dashboard(
        authorize=lambda r: basic_user(r.headers, "s3cret")), "s3cret")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        prompt = await client.get("/runners")
        page = await client.get("/runners", headers=basic("carol", "s3cret"))
    assert prompt.status_code == 401 and prompt.headers["www-authenticate"].startswith("Basic")
    assert page.status_code == 200 and 'data-testid="operator">carol<' in page.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_covey_dashboard_serves_the_views_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'covey.db'}", "COVEY_SHARDS": "4",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])})
    process = subprocess.Popen(
        [sys.executable, "-m", "covey", "dashboard", "--dev", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 20
            while True:  # the line comes just before uvicorn listens
                try:
                    runners = client.get("/runners")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.05)
            jobs = client.get("/jobs")
        assert runners.status_code == 200 and 'data-testid="runners-table"' in runners.text
        assert jobs.status_code == 200 and 'data-testid="operator">development<' in jobs.text
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)  # reads and closes both pipes
        assert process.returncode == 0, errors
