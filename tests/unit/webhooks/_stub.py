"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every
request and answers what the test scripted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # the test's clock when the request arrived
    path: str

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hold: asyncio.Event | None = None  # wait for it before answering


class StubReceiver:
    """Answers the scripted answers in order, then ``default``."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.default = Answer()
        self.port = 0
        self.arrived = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(headers, body, self.now(), scope["path"]))
        self.arrived.set()
        answer = self.script.pop(0) if self.script else self.default
        if answer.hold is not None:
            await answer.hold.wait()
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()]})
        await send({"type": "http.response.body", "body": answer.body})


@asynccontextmanager
async def serving(stub: StubReceiver) -> AsyncIterator[StubReceiver]:
    server = uvicorn.Server(uvicorn.Config(stub, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        stub.port = server.servers[0].sockets[0].getsockname()[1]
        yield stub
    finally:
        server.should_exit = True
        for answer in stub.script:
            if answer.hold is not None:
                answer.hold.set()
        await asyncio.wait_for(task, 10)
