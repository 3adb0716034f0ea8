"""The tutorial's last step (``docs/tutorial/4-three-pods.md``): three pods, one killed.

``examples/shop/step4.py`` runs as the page runs it: ``covey migrate`` on a
PostgreSQL database of its own, then three ``uvicorn step4:app --app-dir
examples/shop`` processes with one ``COVEY_DATABASE_URL`` and one
``COVEY_CLUSTER_SECRET``, each with a runner port of its own. A cart is filled
and checked out through different pods; the pod its cart lives on is killed
with SIGKILL; the other two must still serve the cart and its paid order (both
loaded from the database on a new owner), take a new order to the end, and the
receipt of the first order must have been mailed once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._pods import free_port

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
STEP4 = ROOT / "examples/shop/step4.py"
DEADLINE = 60.0  # seconds for pods to come up, an order to finish, a failover to settle
SECRET = "tutorial-secret"
C1_MAIL = "mail to ann@example.com: order c1: 2 x book, 1 x mug, total 32.00"
C2_MAIL = "mail to bob@example.com: order c2: 3 x pen, total 4.50"


@dataclass
class ShopPod:
    """One ``uvicorn step4:app`` process."""

    name: str
    runner: str  # the runner address it advertises: what a cart's ``runner`` names
    process: subprocess.Popen[bytes]
    log: Path
    http: httpx.Client

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": database_url, "COVEY_CLUSTER_SECRET": SECRET, **extra})
    return env


def _start(name: str, database_url: str, workdir: Path) -> ShopPod:
    http_port, runner_port = free_port(), free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "step4:app", "--app-dir", str(STEP4.parent),
             "--port", str(http_port), "--no-access-log"],
            cwd=workdir, env=_env(database_url, COVEY_RUNNER_PORT=str(runner_port)),
            stdout=out, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10.0)
    return ShopPod(name, f"127.0.0.1:{runner_port}", process, log, http)


@pytest.fixture
def pods(fresh_pg_database: str, tmp_path: Path) -> Iterator[list[ShopPod]]:
    migrate = subprocess.run([sys.executable, "-m", "covey", "migrate"], cwd=tmp_path,
                             env=_env(fresh_pg_database), capture_output=True, text=True,
                             timeout=60, check=False)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    started = [_start(f"pod-{n}", fresh_pg_database, tmp_path) for n in (1, 2, 3)]
    try:
        for pod in started:
            _call(pod, "GET", "/readyz")
        yield started
    finally:
        for pod in started:
            pod.http.close()
            if pod.process.poll() is None:
                pod.process.kill()
            pod.process.wait(timeout=10)


def _call(pod: ShopPod, method: str, path: str, body: dict[str, Any] | None = None,
          ) -> dict[str, Any]:
    """The 2xx JSON answer of ``pod``, retrying what a client retries: no answer yet,
    or a 503/504 (shards moving to new owners after the kill) after its ``Retry-After``.
    Every request here is safe to repeat (line ids, an idempotent checkout)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        wait, seen = 0.1, ""
        try:
            response = pod.http.request(method, path, json=body)
        except httpx.TransportError as exc:
            seen = f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                answer: dict[str, Any] = response.json()
                return answer
            assert response.status_code in (503, 504), (response.status_code, response.text)
            seen = f"{response.status_code} {response.text[:300]}"
            wait = float(response.headers.get("retry-after", "0.1"))
        assert pod.process.poll() is None, f"{pod.name} exited:\n{pod.output()[-3000:]}"
        assert time.monotonic() < deadline, f"{method} {path} on {pod.name}: {seen}"
        time.sleep(wait)


def _until(pod: ShopPod, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while not done(answer := _call(pod, "GET", path)):
        assert time.monotonic() < deadline, f"{path} on {pod.name}: still {answer}"
        time.sleep(0.1)
    return answer


def _until_mailed(pods: list[ShopPod], expected: set[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not expected <= {line for pod in pods for line in pod.output().splitlines()}:
        assert time.monotonic() < deadline, f"not mailed: {expected}"
        time.sleep(0.1)


def _finished(order: dict[str, Any]) -> bool:
    return order["status"] in ("paid", "cancelled")


def test_three_pods_keep_the_cart_and_the_order_when_one_is_killed(
        pods: list[ShopPod]) -> None:
    one, two, three = pods
    _call(one, "POST", "/carts/c1/items", {"line_id": "l1", "sku": "book", "qty": 2})
    _call(two, "POST", "/carts/c1/items", {"line_id": "l2", "sku": "mug"})
    cart = _call(three, "GET", "/carts/c1")  # any pod: the cart lives on one of them
    assert (cart["items"], cart["status"]) == ({"book": 2, "mug": 1}, "open")
    _call(two, "POST", "/carts/c1/checkout",
          {"email": "ann@example.com", "payment_token": "tok_visa"})
    paid = _until(one, "/orders/c1", _finished)
    assert (paid["status"], paid["charge_id"]) == ("paid", "ch_1"), paid

    # the receipt is a job that may run a moment after the order is paid; the mailer
    # stand-in deduplicates in its own process only, so let it go out before the kill
    _until_mailed(pods, {C1_MAIL})

    runners = {pod.runner: pod for pod in pods}
    owner = _call(three, "GET", "/carts/c1")["runner"]
    assert owner in runners, (owner, list(runners))
    victim = runners[owner]
    survivors = [pod for pod in pods if pod is not victim]
    victim.process.send_signal(signal.SIGKILL)
    assert victim.process.wait(timeout=10) == -signal.SIGKILL

    for pod in survivors:  # both go on serving the cart, loaded on a new owner
        cart = _call(pod, "GET", "/carts/c1")
        assert (cart["items"], cart["status"]) == ({"book": 2, "mug": 1}, "ordered"), cart
        assert cart["runner"] in {p.runner for p in survivors}, cart
        assert _call(pod, "GET", "/orders/c1") == paid
    assert _call(survivors[0], "GET", "/stock/book")["available"] == 8

    # a new order goes through on the two pods left
    _call(survivors[0], "POST", "/carts/c2/items", {"line_id": "l1", "sku": "pen", "qty": 3})
    _call(survivors[1], "POST", "/carts/c2/checkout",
          {"email": "bob@example.com", "payment_token": "tok_visa"})
    assert _until(survivors[0], "/orders/c2", _finished)["status"] == "paid"
    for pod in survivors:
        assert pod.http.get("/readyz").status_code == 200
        assert pod.process.poll() is None

    _until_mailed(pods, {C1_MAIL, C2_MAIL})
    mails = [line for pod in pods for line in pod.output().splitlines()
             if line.startswith("mail to")]
    assert sorted(mails) == [C1_MAIL, C2_MAIL]  # each receipt once, across all three pods
