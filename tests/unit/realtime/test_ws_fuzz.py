"""Fuzz: thousands of random frames over one socket (random bytes, random text, random
JSON/msgpack values and maps, huge and malformed ids, deep nesting, oversized frames).

The server must answer every frame that asks for an answer (an error frame, or the
call's reply), keep the socket open, keep its per-connection state bounded, log no
error of its own, and serve a new client afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any

import msgpack
import pytest

from covey.core import Reason
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from . import _ws_serving
from ._ws_serving import ChatImpl, Raw, Room, raw, serving

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("COVEY_FUZZ_SEED", "1312"))
FRAMES = 2000
MAX_FRAME = 16 * 1024
SENTINEL_BASE = 2**52  # ids of the test's own probes; fuzzed ids stay below
REASONS = {r.value for r in Reason}
SERVER_KINDS = {"res", "err", "chunk", "end", "push", "ping", "pong"}


class Fuzzer:
    def __init__(self, rng: random.Random, codec: str) -> None:
        self.rng = rng
        self.codec = codec
        self.next_id = 0

    def junk(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randrange(9 if depth < 4 else 6)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.choice([0, -1, 2**31, 2**53, 2**63 - 1, -(2**63), rng.randrange(-9, 9)])
        if choice == 3:
            return rng.choice([0.5, -1e308, 1e-300, 3.0])
        if choice == 4:
            return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2000)]))
                           for _ in range(rng.randrange(0, 12)))
        if choice == 5 and self.codec == "msgpack":
            return rng.randbytes(rng.randrange(0, 8))
        if choice == 5:
            return ""
        if choice in (6, 7):
            return {self.junk_key(): self.junk(depth + 1) for _ in range(rng.randrange(0, 4))}
        return [self.junk(depth + 1) for _ in range(rng.randrange(0, 4))]

    def junk_key(self) -> str:
        return self.rng.choice(["t", "id", "m", "p", "n", "token", "x", "text", "after", "count"])

    def an_id(self) -> Any:
        rng = self.rng
        if rng.random() < 0.7:
            self.next_id += 1
            return self.next_id
        huge = [2**64 + 5, 10**30] if self.codec == "json" else [2**64 - 1, -(2**63)]
        return rng.choice([-1, 2**53, *huge, 1.0, "7", None, True, [], {"id": 1}])

    def frame(self) -> Any:
        """A frame: a dict to encode, or raw ``bytes`` / ``str`` to send as is."""
        rng = self.rng
        kind = rng.randrange(10)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 200))
        if kind == 1:
            return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 80)))
        if kind == 2:  # nesting deeper than any parser's stack
            depth = rng.randrange(100, 5000)
            if self.codec == "json":
                return "[" * depth + "]" * depth
            return b"\x91" * depth + b"\xc0"
        if kind == 3:
            return self.rng.choice([b"x", "x"]) * (MAX_FRAME + rng.randrange(1, 5000))
        if kind == 4:
            return self.junk()
        frame: dict[str, Any] = {"t": rng.choice(
            ["req", "req", "req", "cancel", "ping", "pong", "auth", "res", "chunk", "push",
             "bogus", 5, None])}
        if rng.random() < 0.9:
            frame["id"] = self.an_id()
        if frame["t"] == "req" or rng.random() < 0.2:
            frame["m"] = rng.choice(["send", "history", "whoami", "nope", "", 7, "x" * 300])
        if rng.random() < 0.8:
            frame["p"] = self.params(frame.get("m"))
        if rng.random() < 0.2:
            frame[self.junk_key()] = self.junk()
        return frame

    def params(self, name: Any) -> Any:
        rng = self.rng
        if rng.random() < 0.5:
            return self.junk()
        if name == "send":
            return {"text": rng.choice(["a", "é", "", "notify"]),
                    "at": rng.choice([None, "2026-01-01T00:00:00Z", "yesterday", 5])}
        if name == "history":
            return {"after": rng.randrange(-5, 50), "count": rng.randrange(0, 4)}
        return {}

    def encode(self, frame: Any) -> bytes | str:
        if isinstance(frame, bytes | str):
            return frame
        if self.codec == "json":
            return json.dumps(frame)
        return bytes(msgpack.packb(frame, use_bin_type=True))


def valid_id(frame: Any) -> int | None:
    if not isinstance(frame, dict):
        return None
    value = frame.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


async def probe(client: Raw, probe_id: int) -> list[dict[str, Any]]:
    """Everything the server sent until the probe's reply (the answers to what came before)."""
    await client.send({"t": "req", "id": probe_id, "m": "whoami"})
    seen = []
    while True:
        frame = await client.recv(timeout=30)
        assert isinstance(frame, dict) and frame.get("t") in SERVER_KINDS, frame
        if frame.get("t") == "err":
            assert frame["r"] in REASONS, frame
            assert isinstance(frame["msg"], str) and len(frame["msg"]) <= 1000
        if frame.get("id") == probe_id:
            assert frame["t"] == "res", frame
            return seen
        seen.append(frame)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_random_frames_are_answered_and_nothing_grows(
        codec: str, caplog: pytest.LogCaptureFixture) -> None:
    _ws_serving.ROOM = Room()
    connections: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connections.append(connection)

    rng = random.Random(f"{SEED}-{codec}")
    fuzzer = Fuzzer(rng, codec)
    app = websocket_app(ChatImpl, rate=None, max_frame=MAX_FRAME, on_connect=on_connect)
    caplog.set_level(logging.WARNING, logger="covey")
    async with serving(app) as served:
        async with raw(served.url(), protocols=(f"covey.v1.{codec}",)) as client:
            waiting: set[int] = set()
            answered: set[int] = set()
            for n in range(FRAMES):
                frame = fuzzer.frame()
                data = fuzzer.encode(frame)
                if isinstance(data, bytes):
                    await client.ws.send_bytes(data)
                else:
                    await client.ws.send_str(data)
                window = await probe(client, SENTINEL_BASE + n)
                answered |= {f["id"] for f in window if f.get("t") in ("res", "err", "end")}
                kind = frame.get("t") if isinstance(frame, dict) else None
                fid = valid_id(frame)
                if kind == "ping":
                    assert {"t": "pong"} in window, f"frame {n}: {data!r:.200}"
                elif kind in ("pong", "cancel"):
                    continue  # asks for no answer (a cancel: "end" only if it was running)
                elif any(f.get("t") == "err" and f.get("id") in (None, fid) for f in window):
                    continue  # refused at once
                else:
                    assert fid is not None, f"frame {n} got no answer: {data!r:.200}"
                    waiting.add(fid)  # a call: its reply may come after the probe's
            await probe(client, SENTINEL_BASE + FRAMES)
            assert waiting <= answered, f"calls never answered: {sorted(waiting - answered)}"
            assert not client.ws.closed
            (connection,) = connections
            assert connection.in_flight == 0
            assert connection.queued == (0, 0)
        # a new client is served as usual
        async with raw(served.url(), protocols=(f"covey.v1.{codec}",)) as fresh:
            await fresh.send({"t": "req", "id": 1, "m": "send", "p": {"text": "still here"}})
            assert (await fresh.recv_until("res"))["p"]["echo"]["text"] == "still here"
    ours = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not ours, [r.getMessage() for r in ours]
