"""Versions of stored data, and the upcasters that bring old versions forward.

A model declares the version of its stored form with a class attribute (version 1
when it has none)::

    class CartState(BaseModel):
        covey_version: ClassVar[int] = 3
        lines: list[Line] = []

A stored snapshot carries the version it was written with. When it is read back,
:func:`upcast` runs the registered upcasters in order, one per version step
(1 -> 2 -> 3), on its plain data (dicts, lists, text and numbers: what the model
dumps), before the data is validated as the model::

    @covey.upcaster(CartState, from_version=1)
    def items_became_lines(data: dict[str, Any]) -> dict[str, Any]:
        return {"lines": [{"sku": item, "qty": 1} for item in data.pop("items", [])]}

Upcasters are pure: they see only the data and return the data of the next
version; nothing is written back until the owner saves a new version. Versions
belong to one class exactly: a subclass has its own chain. Nothing here knows
what the data is (an entity's state today, message payloads later).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from covey.core._checks import invalid_argument
from covey.core._errors import EntityError, Reason, SerializationError

#: the plain data of one version -> the plain data of the next
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Upcaster)

#: type -> {from_version: upcaster}; weak: a model defined in a test goes with it
_CHAINS: weakref.WeakKeyDictionary[type[Any], dict[int, Upcaster]] = (
    weakref.WeakKeyDictionary())


def _name(tp: Any) -> str:
    return str(getattr(tp, "__qualname__", None) or getattr(tp, "__name__", repr(tp)))


def state_version(tp: Any) -> int:
    """The version ``tp`` declares with ``covey_version: ClassVar[int]`` (1 without one).

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "covey_version"``)
            for a version that is not an int >= 1, or one declared as a model field
            (it must be a ``ClassVar``: a field would be stored with the data).
    """
    fields = getattr(tp, "model_fields", None)
    if isinstance(fields, dict) and "covey_version" in fields:
        raise invalid_argument("covey_version", f"{_name(tp)} declares it as a field; declare "
                               "it as `covey_version: ClassVar[int] = N`", type=_name(tp))
    version = getattr(tp, "covey_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise invalid_argument("covey_version", f"{version!r} is not an int >= 1",
                               type=_name(tp))
    return version


def upcaster(tp: type[Any], *, from_version: int) -> Callable[[F], F]:
    """Register a function that migrates ``tp``'s plain data from ``from_version``
    to ``from_version + 1``.

    The function takes the stored data (a dict, as the model of that version
    dumped it) and returns the data of the next version. It must be pure: it may
    run on every read, on any runner, and again after a crash. Returns the
    function unchanged, so it can be tested on its own.

    Example::

        from typing import Any, ClassVar

        from pydantic import BaseModel

        import covey

        class Line(BaseModel):
            sku: str
            qty: int

        class CartState(BaseModel):
            covey_version: ClassVar[int] = 2
            lines: list[Line] = []

        @covey.upcaster(CartState, from_version=1)
        def items_became_lines(data: dict[str, Any]) -> dict[str, Any]:
            items = data.pop("items", [])
            return {**data, "lines": [{"sku": item, "qty": 1} for item in items]}

    Args:
        tp: the model (a class) whose stored form changed.
        from_version: the version the function reads (>= 1 and below
            ``tp.covey_version``).

    Raises:
        ClusterError: ``invalid_argument`` at decoration: ``tp`` is not a class,
            ``from_version`` is not an int in ``1 .. covey_version - 1``
            (``details["field"] == "from_version"``), an upcaster for
            ``(tp, from_version)`` exists already, or the function is not callable.
    """
    if not isinstance(tp, type):
        raise invalid_argument("type", f"{tp!r} is not a class")
    current = state_version(tp)
    if isinstance(from_version, bool) or not isinstance(from_version, int) or not (
            1 <= from_version < current):
        raise invalid_argument(
            "from_version", f"{from_version!r} is not a version {_name(tp)} migrates from "
            f"(1 .. {current - 1}; covey_version is {current})", type=_name(tp),
            known_version=current)
    chain = _CHAINS.setdefault(tp, {})
    if from_version in chain:
        raise invalid_argument(
            "from_version", f"{_name(tp)} has an upcaster from version {from_version} already "
            f"({_name(chain[from_version])})", type=_name(tp), from_version=from_version)

    def register(fn: F) -> F:
        if not callable(fn):
            raise invalid_argument("upcaster", f"{fn!r} is not callable", type=_name(tp))
        if from_version in chain:  # the decorator object applied twice
            raise invalid_argument("from_version", f"{_name(tp)} has an upcaster from version "
                                   f"{from_version} already", type=_name(tp),
                                   from_version=from_version)
        chain[from_version] = fn
        return fn

    return register


def _missing(tp: type[Any]) -> list[int]:
    chain = _CHAINS.get(tp, {})
    return [v for v in range(1, state_version(tp)) if v not in chain]


def check_upcasters(tp: type[Any]) -> None:
    """Refuse a chain with gaps: every version below ``tp``'s needs its upcaster.

    ``Cluster.start`` runs it for the state type of every registered entity type,
    so a missing step fails the deploy, not the first read of an old snapshot.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "upcaster"``,
            ``details["missing"]``: the ``from_version`` of each missing upcaster).
    """
    missing = _missing(tp)
    if missing:
        current = state_version(tp)
        raise invalid_argument(
            "upcaster", f"{_name(tp)} is at version {current} but has no upcaster from "
            f"version{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}",
            type=_name(tp), missing=missing, known_version=current)


def upcast(tp: type[Any], data: Any, from_version: int) -> Any:
    """``data`` stored as version ``from_version`` of ``tp``, brought to its version.

    The data of the current version is returned as is. Validate the result as
    ``tp`` afterwards (the upcasters return plain data).

    Raises:
        EntityError: ``state_version_unknown`` when ``from_version`` is newer than
            ``tp``'s version (written by newer code: leave it alone);
            ``details``: ``type``, ``stored_version``, ``known_version``.
        SerializationError: ``payload_invalid`` when an upcaster raised or did
            not return a dict; ``details``: ``type``, ``upcaster``, ``from_version``.
        ClusterError: ``invalid_argument`` for a ``from_version`` below 1 or a
            missing upcaster (see :func:`check_upcasters`).
    """
    current = state_version(tp)
    if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
        raise invalid_argument("from_version", f"{from_version!r} is not a version (an int "
                               ">= 1)", type=_name(tp))
    if from_version > current:
        raise EntityError(
            f"stored {_name(tp)} is version {from_version}; this code knows versions up to "
            f"{current} (deploy the newer code, or add the model version)",
            reason=Reason.STATE_VERSION_UNKNOWN, type=_name(tp),
            stored_version=from_version, known_version=current)
    if from_version == current:
        return data
    if _missing(tp):
        check_upcasters(tp)
    chain = _CHAINS[tp]
    for version in range(from_version, current):
        data = _step(tp, chain[version], version, data)
    return data


def _step(tp: type[Any], fn: Upcaster, version: int, data: Any) -> dict[str, Any]:
    facts = {"type": _name(tp), "upcaster": _name(fn), "from_version": version}
    try:
        result = fn(data)
    except Exception as exc:
        raise SerializationError(
            f"upcaster {_name(fn)} of {_name(tp)} from version {version} failed: "
            f"{type(exc).__name__}: {exc}", reason=Reason.PAYLOAD_INVALID,
            error_type=type(exc).__name__, **facts) from exc
    if not isinstance(result, dict):
        raise SerializationError(
            f"upcaster {_name(fn)} of {_name(tp)} from version {version} returned a "
            f"{type(result).__name__}, not a dict", reason=Reason.PAYLOAD_INVALID, **facts)
    return result
