"""State machines as durable state: a lifecycle whose transitions are declared once.

A :class:`StateMachine` is a pydantic model, so it is stored, versioned and
restored like any other entity state: the current state and the bounded history
of transitions are its fields. Which transitions are allowed is declared on the
class and never stored, so a deploy can change the rules without migrating data.
"""

from __future__ import annotations

import datetime as dt
import functools
import typing
import weakref
from collections.abc import Collection, Iterable, Mapping
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar

import pydantic

from covey.core import EntityError, Reason
from covey.core.runtime import invalid_argument

S = TypeVar("S")

#: machine class -> {state: the states it may move to}, normalized once per class
_ALLOWED: weakref.WeakKeyDictionary[type[Any], dict[Any, frozenset[Any]]] = (
    weakref.WeakKeyDictionary())


class Transition(pydantic.BaseModel, Generic[S]):
    """One entry of a machine's history: it moved ``from_state -> to_state`` at ``at``."""

    from_state: S
    to_state: S
    at: dt.datetime
    reason: str | None = None


@functools.lru_cache(maxsize=256)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def _plain(state: Any) -> Any:
    """A state as error details carry it across processes (an enum's value)."""
    return state.value if isinstance(state, Enum) else state


class StateMachine(pydantic.BaseModel, Generic[S]):
    """A lifecycle: the current ``state``, the transitions allowed from each state,
    and an optional bounded ``history``.

    Subclass it with the type of the states (an ``Enum`` or a ``Literal`` union),
    give ``state`` its initial value and declare ``transitions`` once. Use it as an
    entity's state, or as a field of one; it serializes like any pydantic model,
    so a machine comes back in its exact state (and history) after a crash.

    Example::

        from enum import StrEnum

        import covey

        class OrderStatus(StrEnum):
            CREATED = "created"
            PAID = "paid"
            SHIPPED = "shipped"
            CANCELLED = "cancelled"

        class OrderFlow(covey.StateMachine[OrderStatus]):
            state: OrderStatus = OrderStatus.CREATED
            transitions = {
                OrderStatus.CREATED: {OrderStatus.PAID, OrderStatus.CANCELLED},
                OrderStatus.PAID: {OrderStatus.SHIPPED, OrderStatus.CANCELLED},
            }
            history_limit = 20

        flow = OrderFlow()
        flow.to(OrderStatus.PAID, reason="card captured")
        try:
            flow.to(OrderStatus.CREATED)
        except covey.EntityError as refused:
            assert refused.reason == "invalid_transition"

    Class attributes:
        transitions: each state -> the states it may move to (any iterable).
            A state with no entry is final. Checked when the class is defined:
            every key and target must be a valid state.
        history_limit: how many transitions ``history`` keeps, newest last
            (0, the default: no history).

    Attributes:
        state: the current state.
        history: the last ``history_limit`` transitions, oldest first.
    """

    state: S
    history: list[Transition[S]] = []

    transitions: ClassVar[Mapping[Any, Iterable[Any]]] = {}
    history_limit: ClassVar[int] = 0

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        meta = cls.__pydantic_generic_metadata__
        if meta["origin"] is not None or meta["parameters"]:
            return  # StateMachine[X] itself, or a subclass still generic: nothing to check
        _ALLOWED[cls] = _declared(cls)

    @classmethod
    def _allowed(cls) -> dict[Any, frozenset[Any]]:
        found = _ALLOWED.get(cls)
        if found is None:  # e.g. StateMachine[X] used directly
            found = _ALLOWED[cls] = _declared(cls)
        return found

    def allowed(self) -> frozenset[S]:
        """The states this machine may move to from its current state."""
        return self._allowed().get(self.state, frozenset())

    def can(self, new: S) -> bool:
        """Whether :meth:`to` ``new`` would be allowed now."""
        return _state_value(type(self), new) in self.allowed()

    @property
    def final(self) -> bool:
        """Whether no transition leaves the current state."""
        return not self.allowed()

    def to(self, new: S, *, reason: str | None = None, at: dt.datetime | None = None) -> None:
        """Move to ``new``; an illegal transition changes nothing.

        Args:
            new: the next state (a raw value such as ``"paid"`` is validated as
                the state type).
            reason: kept in the history entry.
            at: the time of the history entry (default: now, UTC).

        Raises:
            EntityError: ``invalid_transition`` when ``transitions`` does not allow
                ``state -> new``; ``details``: ``from``, ``to``, ``allowed`` (the
                values of the states allowed from the current one, sorted).
            ClusterError: ``invalid_argument`` (``details["field"] == "state"``)
                for a value that is not a state at all.
        """
        target = _state_value(type(self), new)
        allowed = self.allowed()
        if target not in allowed:
            names = sorted(map(str, (_plain(s) for s in allowed)))
            raise EntityError(
                f"{type(self).__name__}: {_plain(self.state)!r} -> {_plain(target)!r} is not "
                f"an allowed transition (allowed: {', '.join(names) or 'none, it is final'})",
                reason=Reason.INVALID_TRANSITION, machine=type(self).__name__,
                **{"from": _plain(self.state), "to": _plain(target), "allowed": names})
        entry = None
        if self.history_limit > 0:  # built before changing anything: it validates
            entry = _entry_type(type(self))(from_state=self.state, to_state=target,
                                             at=at or dt.datetime.now(dt.UTC), reason=reason)
        self.state = target
        if entry is not None:
            self.history.append(entry)
            del self.history[:-self.history_limit]


def _state_type(cls: type[StateMachine[Any]]) -> Any:
    return cls.model_fields["state"].annotation


def _entry_type(cls: type[StateMachine[Any]]) -> type[Transition[Any]]:
    """``Transition[X]`` of the machine's ``history`` field (an entry of another
    parametrization would make pydantic warn when the history is dumped)."""
    entry: type[Transition[Any]] = typing.get_args(cls.model_fields["history"].annotation)[0]
    return entry


def _state_value(cls: type[StateMachine[Any]], value: Any, field: str = "state") -> Any:
    """``value`` as the machine's state type (``"paid"`` -> ``OrderStatus.PAID``)."""
    try:
        return _adapter(_state_type(cls)).validate_python(value)
    except pydantic.ValidationError:
        raise invalid_argument(field, f"{value!r} is not a state of {cls.__name__}",
                               machine=cls.__name__) from None


def _declared(cls: type[StateMachine[Any]]) -> dict[Any, frozenset[Any]]:
    """``cls.transitions`` checked and normalized to ``{state: frozenset(states)}``."""
    limit = cls.history_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise invalid_argument("history_limit", f"{limit!r} is not an int >= 0",
                               machine=cls.__name__)
    declared = cls.transitions
    if not isinstance(declared, Mapping) or not declared:
        raise invalid_argument("transitions", f"{cls.__name__} declares no transitions (a "
                               "mapping: state -> the states it may move to)",
                               machine=cls.__name__)
    allowed: dict[Any, frozenset[Any]] = {}
    for source, targets in declared.items():
        if isinstance(targets, str | bytes) or not isinstance(targets, Collection):
            raise invalid_argument("transitions", f"the targets of {source!r} must be a "
                                   f"collection of states, not {targets!r}",
                                   machine=cls.__name__)
        key = _state_value(cls, source, "transitions")
        allowed[key] = allowed.get(key, frozenset()) | frozenset(
            _state_value(cls, target, "transitions") for target in targets)
    return allowed
