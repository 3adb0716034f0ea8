"""Pods of ``examples/live_orders.py`` and a headless Chromium, for the browser test.

- :func:`start_live_orders`: ``python examples/live_orders.py --port N`` in a
  process of its own (uvicorn, a runner embedded), configured by ``COVEY_*``
  variables; a :class:`~tests.acceptance._pods.Pod` (wait for it with
  ``_pods.wait_ready``). Given the port of a stopped pod, it starts that pod again
  where its page's clients reconnect.
- :func:`require_chromium` and :func:`chromium`: Debian's ``chromium`` driven by
  Playwright (``playwright install`` downloads browsers; this network does not
  allow it, so the system's binary is launched). Missing either skips the test
  loudly, except under ``CI=true``, where it fails.
- :func:`post_update`: ``POST /orders/{id}`` to one pod, sent again with the same
  ``update_id`` after a retryable answer (503 while shards move between pods), so
  the order is updated once however often it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._pods import ROOT, Pod, free_port

EXAMPLE = ROOT / "examples" / "live_orders.py"


def start_live_orders(name: str, database_url: str, workdir: Path, *, port: int | None = None,
                      **env: str) -> Pod:
    """Start a pod of the example (not waiting for it: see ``_pods.wait_ready``)."""
    port = port or free_port()
    log = workdir / f"{name}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    environment.update({
        "COVEY_DATABASE_URL": database_url,
        "COVEY_SHARDS": "30",
        "COVEY_CLUSTER_SECRET": "browser-secret",
        "COVEY_RUNNER_PORT": "0",
        "COVEY_SHARDING_SHUTDOWN_GRACE": "5",
        **env,
    })
    with log.open("ab") as out:  # a restarted pod appends to its log
        process = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", str(port)],
                                   cwd=workdir, env=environment, stdout=out,
                                   stderr=subprocess.STDOUT)
    return Pod(name, port, process, log)


def require_chromium() -> str:
    """The Chromium executable, after checking Playwright imports; else skip (fail on CI)."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[dev]')"
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if problem is None and executable is None:
        problem = "no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(f"SKIPPING THE BROWSER TEST: {problem}")
    assert executable is not None
    return executable


@contextlib.asynccontextmanager
async def chromium(executable: str) -> AsyncIterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        # --no-sandbox: containers (and root) have no user namespaces for the sandbox
        browser = await driver.chromium.launch(executable_path=executable, headless=True,
                                               args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def post_update(http: httpx.AsyncClient, pod: Pod, order: str, body: dict[str, Any],
                      *, deadline: float = 30.0) -> dict[str, Any]:
    """``POST /orders/{order}`` to ``pod``; its JSON answer (retries: module docstring)."""
    assert "update_id" in body, "a retried update must carry its idempotency key"
    give_up = time.monotonic() + deadline
    while True:
        try:
            answer = await http.post(f"{pod.url}/orders/{order}", json=body, timeout=20.0)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if answer.status_code == 200:
                result: dict[str, Any] = answer.json()
                return result
            last = f"{answer.status_code} {answer.text[:300]}"
            if answer.status_code != 503:
                raise AssertionError(f"POST /orders/{order} to {pod.name}: {last}")
        if time.monotonic() > give_up:
            raise AssertionError(f"POST /orders/{order} to {pod.name} kept failing: {last}")
        await asyncio.sleep(0.2)
