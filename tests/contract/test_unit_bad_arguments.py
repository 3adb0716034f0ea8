"""Bad arguments to ``MessageStorage.unit`` and to a unit are refused the same way
on every backend: ``invalid_argument`` naming the field, and nothing staged.

``test_argument_checks`` fails for a method of :class:`UnitOfWork` without cases
here (methods without arguments are listed in :data:`NO_ARGUMENTS`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from covey.core import ClusterError, Reason
from covey.storage import Fence, Message, Reply, Storage, StreamEntry, UnitOfWork, Versioned

from ._helpers import RUNNER_A, S1, msg
from .test_argument_checks import EVENTS, FENCES, IDS, MESSAGES, STATE_KEYS, VERSIONS, event

Call = Callable[[UnitOfWork, Message, Fence, Storage], Awaitable[object] | object]
Case = tuple[str, str, Call]  # field, label, call

#: UnitOfWork methods that take no argument
NO_ARGUMENTS = frozenset({"discard", "transaction"})


async def _async() -> None:
    """Stands in for a coroutine function given where a plain callback goes."""


def _cases() -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = {}

    def case(method: str, field: str, label: str, call: Call) -> None:
        cases.setdefault(method, []).append((field, label, call))

    for field, label, fence in FENCES:
        case("unit", field, label, lambda u, m, f, s, v=fence: s.messages.unit(v, m.id))
    for label, value in IDS:
        case("unit", "request_id", label, lambda u, m, f, s, v=value: s.messages.unit(f, v))

    for label, key in STATE_KEYS:
        case("put_state", "key", label,
             lambda u, m, f, s, k=key: u.put_state(k, b"v", expected_version=None))
    for label, value in [("str", "v"), ("None", None), ("bytearray", bytearray(b"v"))]:
        case("put_state", "value", label,
             lambda u, m, f, s, v=value: u.put_state("k", v, expected_version=None))
    for label, version in VERSIONS:
        case("put_state", "expected_version", label,
             lambda u, m, f, s, v=version: u.put_state("k", b"v", expected_version=v))

    for label, value in [("None", None), ("str", "ab"), ("a dict", {1: msg()}), ("int", 5)]:
        case("send", "messages", label, lambda u, m, f, s, v=value: u.send(v))
    case("send", "message", "[None]", lambda u, m, f, s: u.send([msg(), None]))  # type: ignore[list-item]
    for field, label, change in MESSAGES:
        case("send", field, label,
             lambda u, m, f, s, c=change: u.send([msg(), replace(msg(), **c)]))

    for label, value in [("None", None), ("str", "ab"), ("int", 5)]:
        case("publish", "events", label, lambda u, m, f, s, v=value: u.publish(v))
    case("publish", "event", "[None]", lambda u, m, f, s: u.publish([event(), None]))  # type: ignore[list-item]
    for field, label, change in EVENTS:
        case("publish", field, label,
             lambda u, m, f, s, c=change: u.publish([event(), event(**c)]))

    good = StreamEntry("orders", 1, b"p")
    for field, label, batch in [
            ("entries", "None", None), ("entries", "str", "ab"), ("entries", "int", 5),
            ("entry", "[None]", [good, None]),
            ("entry.stream", "empty", [good, replace(good, stream="")]),
            ("entry.id", "0", [good, replace(good, id=0)]),
            ("entry.payload", "str", [good, replace(good, payload="p")]),  # type: ignore[arg-type]
            ("entry.headers", "int value", [good, replace(good, headers={"h": 1})])]:  # type: ignore[dict-item]
        case("append_stream", field, label, lambda u, m, f, s, v=batch: u.append_stream(v))

    for label, value in [("None", None), ("tuple", (1, b"r")), ("str", "r")]:
        case("commit", "reply", label, lambda u, m, f, s, v=value: u.commit(v))
    for field, label, reply in [("reply.payload", "str", Reply(1, "r")),  # type: ignore[arg-type]
                                ("reply.is_error", "int", Reply(1, b"r", 1))]:  # type: ignore[arg-type]
        case("commit", field, label,
             lambda u, m, f, s, r=reply: u.commit(replace(r, request_id=m.id)))
    case("commit", "reply.request_id", "another message's",
         lambda u, m, f, s: u.commit(Reply(m.id + 1, b"r")))
    case("commit", "request_id", "0", lambda u, m, f, s: u.commit(Reply(0, b"r")))

    for method in ("on_commit", "on_discard"):
        for label, value in [("None", None), ("str", "print"), ("coroutine function", _async)]:
            case(method, "callback", label,
                 lambda u, m, f, s, v=value, n=method: getattr(u, n)(v))
    return cases


UNIT_CASES = _cases()
#: the UnitOfWork methods with cases (``unit`` is MessageStorage's)
COVERED = (set(UNIT_CASES) - {"unit"}) | NO_ARGUMENTS


@pytest.mark.parametrize("method", sorted(UNIT_CASES))
async def test_units_refuse_bad_arguments(storage: Storage, method: str) -> None:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    message = msg()
    await storage.messages.save_request(message)
    problems = []
    for field, label, call in UNIT_CASES[method]:
        unit = storage.messages.unit(fence, message.id)
        try:
            outcome = call(unit, message, fence, storage)
            if isinstance(outcome, Awaitable):
                await outcome
        except ClusterError as exc:
            if exc.reason is not Reason.INVALID_ARGUMENT or exc.details.get("field") != field:
                problems.append(f"{field}/{label}: {exc!r} details={exc.details}")
        except Exception as exc:  # exactly what must not happen
            problems.append(f"{field}/{label}: not a ClusterError: {exc!r}")
        else:
            problems.append(f"{field}/{label}: accepted")
        if unit.used or unit.sent:
            problems.append(f"{field}/{label}: staged something")
        await unit.discard()
    assert problems == []
    # nothing was written: the message is still open and the unit still works
    assert (await storage.messages.inspect([message.id]))[message.id].reply is None
    unit = storage.messages.unit(fence, message.id)
    unit.put_state("k", b"v", expected_version=None)
    await unit.commit(Reply(message.id, b"r"))
    assert await storage.state.get("k") == Versioned(b"v", 1)


def test_bad_argument_tables_are_not_empty() -> None:
    # a table emptied by mistake would make the test above pass on nothing
    assert all(len(cases) >= 3 for cases in UNIT_CASES.values()), UNIT_CASES.keys()


def _fields(cases: list[Case]) -> set[str]:
    return {field for field, _, _ in cases}


def test_every_argument_is_covered() -> None:
    assert _fields(UNIT_CASES["unit"]) >= {"fence", "fence.epoch", "request_id"}
    assert _fields(UNIT_CASES["put_state"]) == {"key", "value", "expected_version"}
    assert _fields(UNIT_CASES["commit"]) >= {"reply", "reply.request_id"}
