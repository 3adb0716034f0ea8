"""The opening exchange of a runner connection: the client proves the secret.

The server opens with a ``challenge`` (a random nonce). The client answers
``hello``: the HMAC-SHA256 of the nonce under the cluster secret, its protocol
version, its frame limit and the address it advertises (None for a client-only
process). The server checks the MAC first, then the other fields, and answers
``welcome`` with its own frame limit, or ``denied`` and closes. Any other frame
before that is a protocol error.

The functions here decide; the connection (:mod:`._connection`) acts: it sends
the reply, logs and closes. Nothing here runs once a connection is ready.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from covey.core import RunnerAddress
from covey.sharding.transport._frames import (
    CHALLENGE,
    DENIED,
    HELLO,
    PROTOCOL_VERSION,
    WELCOME,
    brief,
    hello_problem,
    limit_problem,
)


@dataclass(frozen=True, slots=True)
class Step:
    """What a connection does with one frame of the handshake.

    Attributes:
        reply: a frame to send back.
        ready: the handshake is done: serve from now on.
        peer: the address the client advertised.
        peer_limit: the largest frame the other side accepts.
        malformed: why the frame breaks the protocol (drop the connection).
        wrong_secret: (server) the client's MAC is wrong: send ``reply``
            (``denied``) and close.
        denied: (client) the server refused our secret: close.
    """

    reply: dict[str, Any] | None = None
    ready: bool = False
    peer: RunnerAddress | None = None
    peer_limit: int | None = None
    malformed: str | None = None
    wrong_secret: bool = False
    denied: bool = False


def new_nonce() -> bytes:
    """A fresh challenge nonce (16 random bytes)."""
    return os.urandom(16)


def challenge(nonce: bytes) -> dict[str, Any]:
    """The server's first frame."""
    return {"t": CHALLENGE, "n": nonce}


def server_step(kind: str, frame: dict[str, Any], *, secret: bytes, nonce: bytes,
                max_frame_bytes: int) -> Step:
    """The server's answer to a frame that arrived before the handshake ended."""
    if kind != HELLO:
        return _unexpected(kind)
    mac = frame.get("mac")
    if not isinstance(mac, bytes) or not hmac.compare_digest(mac, _mac(secret, nonce)):
        return Step(reply={"t": DENIED, "m": "wrong cluster secret"}, wrong_secret=True)
    if (problem := hello_problem(frame)) is not None:  # once the secret is proven
        return Step(malformed=problem)
    advertised = frame.get("a")
    return Step(reply={"t": WELCOME, "m": max_frame_bytes}, ready=True,
                peer=None if advertised is None else RunnerAddress(advertised[0], advertised[1]),
                peer_limit=_limit(frame))


def client_step(kind: str, frame: dict[str, Any], *, secret: bytes, max_frame_bytes: int,
                address: RunnerAddress | None) -> Step:
    """The client's answer to a frame that arrived before the handshake ended."""
    if kind == CHALLENGE and isinstance(frame.get("n"), bytes):
        return Step(reply={
            "t": HELLO, "v": PROTOCOL_VERSION, "mac": _mac(secret, frame["n"]),
            "m": max_frame_bytes,
            "a": [address.host, address.port] if address is not None else None})
    if kind == WELCOME:
        if (problem := limit_problem(frame)) is not None:
            return Step(malformed=problem)
        return Step(ready=True, peer_limit=_limit(frame))
    if kind == DENIED:
        return Step(denied=True)
    return _unexpected(kind)


def _mac(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def _limit(frame: dict[str, Any]) -> int | None:
    limit = frame.get("m")
    return limit if type(limit) is int and limit > 0 else None


def _unexpected(kind: str) -> Step:
    return Step(malformed=f"unexpected {brief(kind)} frame during the handshake")
