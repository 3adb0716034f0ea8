"""The messenger's wire protocol: what runners send each other, and who answers.

Requests (answered) and notifications (not answered) are transport bodies with
a kind ``k``:

=============  ============  ===================================================
kind           sent as       meaning
=============  ============  ===================================================
``call``       request/note  run a volatile message (``e``: the envelope)
``push``       request       run a persisted message now, answer its reply
``ping``       request       answered ``{"ok": True}``
``wake``       note          a persisted message was stored: run it
``wake_many``  note          the same for a list of envelopes (``e``)
``leaving``    note          the sender is leaving: re-read membership now
(others)       either        a handler the layers above added (:meth:`Inbound.add`)
=============  ============  ===================================================

An answer is ``{"ok": True, "p": payload, "x": is_error}`` or, when the request
failed, ``{"ok": False, "r": reason, "m": message, "d": details}`` (the fields of
:mod:`._wire_errors`). A persisted message that has no reply yet without anything
failing (:class:`~._completion.NotYet`) is answered ``not_owner`` with ``"w":
True``: a runner of this version reads it as "not yet", an older one as the
``not_owner`` it retried on before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from covey.core import ClusterError, EntityError, Reason, RunnerAddress, TransportError
from covey.sharding._completion import Completion, NotYet
from covey.sharding._envelope import Envelope
from covey.sharding._sharding import Sharding
from covey.sharding._wire_errors import error_fields, error_from_fields
from covey.sharding.transport import Body
from covey.storage import Reply

log = logging.getLogger("covey.messages")

def call_body(envelope: Envelope) -> Body:
    """Run a volatile message (request or notification)."""
    return {"k": "call", "e": envelope.to_wire()}


def push_body(envelope: Envelope) -> Body:
    """Run a persisted message now and answer its reply (request)."""
    return {"k": "push", "e": envelope.to_wire()}


def wake_body(envelope: Envelope) -> Body:
    """A persisted message was stored: run it (notification)."""
    return {"k": "wake", "e": envelope.to_wire()}


def wake_many_body(envelopes: list[Envelope]) -> Body:
    """Persisted messages were stored: run them (notification)."""
    return {"k": "wake_many", "e": [e.to_wire() for e in envelopes]}


def reply_answer(reply: Reply) -> Body:
    """The answer carrying a reply (a handler's failure is a reply too)."""
    return {"ok": True, "p": reply.payload, "x": reply.is_error}


def error_answer(exc: ClusterError) -> Body:
    """The answer of a request that failed."""
    reason, message, details = error_fields(exc)
    return {"ok": False, "r": reason, "m": message, "d": details}


def not_yet_answer(result: NotYet) -> Body:
    """The answer of a push whose message has no reply yet (see the module docstring)."""
    return {"ok": False, "r": Reason.NOT_OWNER.value, "m": result.why, "d": {}, "w": True}


def read_answer(answer: Body, request_id: int) -> Reply | NotYet:
    """The reply (or "not yet") an answer carries.

    Raises:
        ClusterError: the typed error of a failed request; ``remote_failure``
            for an answer without a payload.
    """
    if answer.get("ok"):
        payload = answer.get("p")
        if not isinstance(payload, bytes):
            raise TransportError("malformed reply from peer", reason=Reason.REMOTE_FAILURE)
        return Reply(request_id, payload, bool(answer.get("x")))
    if answer.get("w") is True:
        return NotYet(str(answer.get("m", "")))
    raise error_from_fields(answer.get("r"), answer.get("m", ""), answer.get("d"),
                            fallback=Reason.REMOTE_FAILURE)


class Inbound:
    """Answers what peers send (the transport's request and notify handlers).

    Args:
        completion: runs the messages here.
        sharding: woken when a peer leaves.
        spawn: runs a woken message as a task of the messenger's set.
    """

    def __init__(self, completion: Completion, sharding: Sharding,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._completion = completion
        self._sharding = sharding
        self._spawn = spawn
        self._handlers: dict[str, Callable[[RunnerAddress | None, Body], Awaitable[Body]]] = {}

    def add(self, kind: str,
            handler: Callable[[RunnerAddress | None, Body], Awaitable[Body]]) -> None:
        """Answer requests and notifications of ``kind`` with ``handler`` (a layer
        above the messenger: real-time pushes). Its answer to a notification is
        dropped; a :class:`ClusterError` it raises is answered as an error."""
        if kind in ("call", "push", "ping", "wake", "wake_many", "leaving") or \
                kind in self._handlers:
            raise ValueError(f"the wire kind {kind!r} is taken")
        self._handlers[kind] = handler

    async def handle_request(self, peer: RunnerAddress | None, body: Body) -> Body:
        """The transport's request handler."""
        try:
            kind = body.get("k")
            if kind == "call":
                reply = await self._completion.deliver_volatile(Envelope.from_wire(body.get("e")))
            elif kind == "push":
                result = await self._completion.process(Envelope.from_wire(body.get("e")))
                if isinstance(result, NotYet):
                    return not_yet_answer(result)
                reply = result
            elif kind == "ping":
                return {"ok": True}
            elif isinstance(kind, str) and (handler := self._handlers.get(kind)) is not None:
                return await handler(peer, body)
            else:
                raise EntityError(f"unknown request kind {kind!r}", reason=Reason.INVALID_ARGUMENT)
        except ClusterError as exc:
            return error_answer(exc)
        return reply_answer(reply)

    async def handle_notify(self, peer: RunnerAddress | None, body: Body) -> None:
        """The transport's notification handler."""
        kind = body.get("k")
        try:
            if kind == "call":
                await self._completion.deliver_volatile(Envelope.from_wire(body.get("e")))
            elif kind == "wake":
                # run in this notification's own task, so the message is claimed at
                # once: a request for it sent right after this wake (a caller waiting
                # for its reply) then joins this run instead of starting one
                await self._completion.run_quietly(Envelope.from_wire(body.get("e")))
            elif kind == "wake_many":
                wires = body.get("e")
                envelopes = [Envelope.from_wire(w) for w in wires] if isinstance(
                    wires, list) else []
                for envelope in envelopes[1:]:
                    self._spawn(self._completion.run_quietly(envelope))
                if envelopes:  # the first in this task (see "wake")
                    await self._completion.run_quietly(envelopes[0])
            elif kind == "leaving":
                self._sharding.wake()
            elif isinstance(kind, str) and (handler := self._handlers.get(kind)) is not None:
                await handler(peer, body)
        except ClusterError as exc:
            log.info("dropped a notification (%s): %s", kind, exc)
