"""The tutorial's shop (``docs/tutorial/``) does what its pages say, steps 1 to 3.

Each step is served the way the page serves it -- ``uvicorn stepN:app
--app-dir examples/shop`` -- in a temporary directory of its own, on the embedded
SQLite default (``covey.db`` there, no ``COVEY_*`` settings), and driven over
HTTP with the requests the page shows; the answers and the server's output must
be the ones the page prints. A restart is a real one: Ctrl+C (SIGINT), then a
new process on the same directory. The files:

- ``examples/shop/step1.py``: a cart entity, in memory (gone after a restart)
- ``examples/shop/step2.py``: a durable cart, a checkout and the receipt job
- ``examples/shop/step3.py``: ``OrderPlaced`` from the checkout, the checkout saga

Step 4 (``examples/shop/step4.py``, three pods on PostgreSQL) is
``tests/acceptance/test_tutorial_pods.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = {
    "step1": ROOT / "examples/shop/step1.py",
    "step2": ROOT / "examples/shop/step2.py",
    "step3": ROOT / "examples/shop/step3.py",
}
JSON = {"content-type": "application/json"}
DEADLINE = 30.0  # seconds for a server to come up, stop, or finish background work


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``uvicorn stepN:app`` process; its output goes to ``log``."""

    def __init__(self, step: str, workdir: Path, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", f"{step}:app",
                 "--app-dir", str(ROOT / "examples" / "shop"),
                 "--port", str(self.port), "--no-access-log"],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"not ready in {DEADLINE} s:\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> int:
        """Ctrl+C, as the page does; the exit status."""
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body, headers=JSON)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Start a step's server in ``tmp_path`` (again: a restart on the same ``covey.db``)."""
    started: list[Server] = []

    def _serve(step: str) -> Server:
        server = Server(step, tmp_path, tmp_path / f"{step}-{len(started)}.log")
        started.append(server)
        server.wait_ready()
        return server

    yield _serve
    for server in started:
        if server.process.poll() is None:
            server.stop()


def _until(fetch: Callable[[], httpx.Response], done: Callable[[dict[str, Any]], bool],
           what: str) -> dict[str, Any]:
    """Poll ``fetch`` until its JSON body satisfies ``done`` (background work)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        response = fetch()
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"{what}: still {body} after {DEADLINE} s"
        time.sleep(0.05)


def test_the_step_files_exist() -> None:
    for path in STEPS.values():
        assert path.is_file(), path


def test_step1_a_cart_in_memory_behind_fastapi(serve: Callable[[str], Server]) -> None:
    shop = serve("step1")
    book = {"line_id": "l1", "sku": "book"}
    first = shop.post("/carts/c1/items", book)
    assert first.status_code == 200
    assert first.json() == {"cart_id": "c1", "items": {"book": 1}}
    # the same line again (a client retrying after a timeout): the stored reply, added once
    assert shop.post("/carts/c1/items", book).json() == {"cart_id": "c1", "items": {"book": 1}}
    pens = shop.post("/carts/c1/items", {"line_id": "l2", "sku": "pen", "qty": 2})
    assert pens.json() == {"cart_id": "c1", "items": {"book": 1, "pen": 2}}
    # l1 with another payload: refused, not answered with l1's reply
    clash = shop.post("/carts/c1/items", {"line_id": "l1", "sku": "book", "qty": 5})
    assert clash.status_code == 409
    assert clash.headers["content-type"] == "application/problem+json"
    assert clash.json()["reason"] == "idempotency_conflict"
    assert shop.post("/carts/c1/items", {"line_id": "l3", "sku": "laptop"}).status_code == 422
    assert shop.get("/carts/c1").json() == {"cart_id": "c1", "items": {"book": 1, "pen": 2}}
    assert shop.stop() == 0

    again = serve("step1")  # the same covey.db: what survived the restart?
    assert again.get("/carts/c1").json() == {"cart_id": "c1", "items": {}}
    # the stored reply survived, the cart did not: step 2's reason to be
    assert again.post("/carts/c1/items", book).json() == {"cart_id": "c1", "items": {"book": 1}}
    assert again.get("/carts/c1").json() == {"cart_id": "c1", "items": {}}


def test_step2_a_durable_cart_and_the_receipt_job(serve: Callable[[str], Server]) -> None:
    shop = serve("step2")
    ann = {"email": "ann@example.com"}
    empty = shop.post("/carts/c1/checkout", ann)
    assert (empty.status_code, empty.json()["reason"]) == (409, "invalid_transition")
    shop.post("/carts/c1/items", {"line_id": "l1", "sku": "book", "qty": 2})
    shop.post("/carts/c1/items", {"line_id": "l2", "sku": "mug"})
    placed = shop.post("/carts/c1/checkout", ann)
    assert placed.status_code == 200
    order = placed.json()
    job_id = order.pop("receipt_job")
    assert isinstance(job_id, str) and job_id.isdigit()  # a 64-bit id: a string in JSON
    assert order == {"order_id": "c1", "email": "ann@example.com",
                     "items": {"book": 2, "mug": 1}, "total": 3200}
    retried = shop.post("/carts/c1/checkout", ann).json()
    assert retried == {**order, "receipt_job": job_id}  # the same order, the same job
    late = shop.post("/carts/c1/items", {"line_id": "l3", "sku": "pen"})
    assert (late.status_code, late.json()["reason"]) == (409, "invalid_transition")
    job = _until(lambda: shop.get(f"/jobs/{job_id}"), lambda j: j["state"] == "succeeded",
                 "the receipt job")
    assert job == {"job_id": job_id, "state": "succeeded", "result": "msg-1"}
    mails = [line for line in shop.output().splitlines() if line.startswith("mail to")]
    assert mails == ["mail to ann@example.com: order c1: 2 x book, 1 x mug, total 32.00"]
    assert shop.stop() == 0

    again = serve("step2")  # the same covey.db: this time the cart is there
    assert again.get("/carts/c1").json() == {"cart_id": "c1", "items": {"book": 2, "mug": 1},
                                             "status": "ordered"}
    assert again.post("/carts/c1/checkout", ann).json() == {**order, "receipt_job": job_id}
    assert again.stop() == 0
    assert "mail to" not in again.output()  # no second receipt after the restart


def test_step3_the_event_and_the_checkout_saga(serve: Callable[[str], Server],
                                               tmp_path: Path) -> None:
    shop = serve("step3")

    def order(order_id: str) -> dict[str, Any]:
        return _until(lambda: shop.get(f"/orders/{order_id}"),
                      lambda o: o["status"] in ("paid", "cancelled"), f"order {order_id}")

    shop.post("/carts/c1/items", {"line_id": "l1", "sku": "book", "qty": 2})
    shop.post("/carts/c1/items", {"line_id": "l2", "sku": "mug"})
    placed = shop.post("/carts/c1/checkout",
                       {"email": "ann@example.com", "payment_token": "tok_visa"})
    assert placed.status_code == 202
    assert placed.json() == {"order_id": "c1", "status": "placed", "charge_id": None,
                             "problem": None}
    assert order("c1") == {"order_id": "c1", "status": "paid", "charge_id": "ch_1",
                           "problem": None}
    assert shop.get("/stock/book").json() == {"sku": "book", "available": 8}
    assert shop.get("/stock/mug").json() == {"sku": "mug", "available": 4}

    # a declined card: the charge fails, the mugs it held go back on the shelf
    shop.post("/carts/c2/items", {"line_id": "l1", "sku": "mug", "qty": 2})
    shop.post("/carts/c2/checkout", {"email": "bob@example.com",
                                     "payment_token": "tok_chargeDeclined"})
    assert order("c2") == {"order_id": "c2", "status": "cancelled", "charge_id": None,
                           "problem": "CardDeclined: your card was declined"}
    assert shop.get("/stock/mug").json() == {"sku": "mug", "available": 4}
    # the journal the page shows with `covey workflows show order-c2`
    shown = subprocess.run(
        [sys.executable, "-m", "covey", "workflows", "show", "order-c2", "--json"],
        cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("COVEY_")},
        capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    saga = json.loads(shown.stdout)
    assert saga["state"] == "compensated"
    assert [(e["key"], e["status"]) for e in saga["journal"]] == [
        ("reserve#1", "done"), ("charge#1", "failed"),
        ("charge#1:compensate", "done"), ("reserve#1:compensate", "done")]

    # not enough mugs: the books it held already are released again
    shop.post("/carts/c3/items", {"line_id": "l1", "sku": "mug", "qty": 5})
    shop.post("/carts/c3/items", {"line_id": "l2", "sku": "book"})
    shop.post("/carts/c3/checkout", {"email": "cy@example.com", "payment_token": "tok_visa"})
    cancelled = order("c3")
    assert cancelled["status"] == "cancelled"
    assert cancelled["problem"].endswith("only 4 mug left"), cancelled
    assert shop.get("/stock/book").json() == {"sku": "book", "available": 8}

    missing = shop.get("/orders/nope")
    assert (missing.status_code, missing.json()["reason"]) == (404, "workflow_not_found")
    deadline = time.monotonic() + DEADLINE  # the receipt job runs after the saga's last step
    while "mail to" not in shop.output():
        assert time.monotonic() < deadline, shop.output()
        time.sleep(0.05)
    assert shop.stop() == 0
    mails = [line for line in shop.output().splitlines() if line.startswith("mail to")]
    assert mails == ["mail to ann@example.com: order c1: 2 x book, 1 x mug, total 32.00"]
