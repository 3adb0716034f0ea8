"""StateMachine: declared transitions, illegal ones refused without change, a
bounded history, and a round trip through storage's serialization."""

from __future__ import annotations

import datetime as dt
from enum import Enum, StrEnum
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, EntityError, MsgpackCodec, Reason
from covey.testing import TestCluster


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
    history_limit = 3


class OrderState(BaseModel):
    """An entity's durable state with the machine as one of its fields."""

    flow: OrderFlow = OrderFlow()
    items: list[str] = []


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_allowed_transitions_move_and_are_recorded() -> None:
    flow = OrderFlow()
    assert flow.state is OrderStatus.CREATED
    assert flow.allowed() == {OrderStatus.PAID, OrderStatus.CANCELLED}
    flow.to(OrderStatus.PAID, reason="card captured", at=T0)
    flow.to("shipped", at=T0 + dt.timedelta(hours=1))  # a raw value is validated
    assert flow.state is OrderStatus.SHIPPED and flow.final
    assert [(h.from_state, h.to_state, h.reason) for h in flow.history] == [
        (OrderStatus.CREATED, OrderStatus.PAID, "card captured"),
        (OrderStatus.PAID, OrderStatus.SHIPPED, None),
    ]
    assert flow.history[1].at == T0 + dt.timedelta(hours=1)


@pytest.mark.parametrize(("path", "illegal", "allowed"), [
    ([], OrderStatus.SHIPPED, ["cancelled", "paid"]),  # created -> shipped skips paying
    (["paid", "shipped"], OrderStatus.CANCELLED, []),  # shipped is final
    (["cancelled"], OrderStatus.PAID, []),
    (["paid"], OrderStatus.PAID, ["cancelled", "shipped"]),  # no self-transition declared
])
def test_an_illegal_transition_raises_and_changes_nothing(
    path: list[str], illegal: OrderStatus, allowed: list[str]
) -> None:
    flow = OrderFlow()
    for step in path:
        flow.to(step, at=T0)
    before = flow.model_copy(deep=True)
    with pytest.raises(EntityError) as info:
        flow.to(illegal, reason="should not stick")
    error = info.value
    assert error.reason is Reason.INVALID_TRANSITION and not error.retryable
    assert error.details["from"] == flow.state.value
    assert error.details["to"] == illegal.value
    assert error.details["allowed"] == allowed
    assert flow == before  # neither the state nor the history changed


def test_the_history_keeps_only_the_newest_entries() -> None:
    class Toggle(covey.StateMachine[Literal["on", "off"]]):
        state: Literal["on", "off"] = "off"
        transitions: ClassVar[dict[str, set[str]]] = {"off": {"on"}, "on": {"off"}}
        history_limit: ClassVar[int] = 2

    toggle = Toggle()
    for n in range(5):
        toggle.to("on" if toggle.state == "off" else "off", reason=str(n), at=T0)
    assert toggle.state == "on"
    assert [h.reason for h in toggle.history] == ["3", "4"]


def test_no_history_unless_asked_for() -> None:
    class Door(covey.StateMachine[Literal["open", "shut"]]):
        state: Literal["open", "shut"] = "shut"
        transitions = {"shut": {"open"}, "open": {"shut"}}

    door = Door()
    door.to("open")
    assert door.state == "open" and door.history == []


def test_state_and_history_survive_the_stored_form() -> None:
    order = OrderState(items=["book"])
    order.flow.to(OrderStatus.PAID, reason="paid", at=T0)
    codec = MsgpackCodec()
    stored = codec.encode(order)  # what a durable state save writes
    restored = codec.decode(stored, OrderState)
    assert restored == order
    assert restored.flow.state is OrderStatus.PAID
    assert restored.flow.history[0].reason == "paid" and restored.flow.history[0].at == T0
    # the restored machine enforces the same rules
    with pytest.raises(EntityError):
        restored.flow.to(OrderStatus.CREATED)
    restored.flow.to(OrderStatus.SHIPPED, at=T0)
    again = OrderState.model_validate(restored.model_dump())
    assert again.flow.state is OrderStatus.SHIPPED and len(again.flow.history) == 2
    assert OrderState.model_validate_json(again.model_dump_json()) == again


def test_a_plain_enum_state_travels_as_its_value() -> None:
    class Phase(Enum):
        DRAFT = 1
        LIVE = 2

    class Publishing(covey.StateMachine[Phase]):
        state: Phase = Phase.DRAFT
        transitions = {Phase.DRAFT: [Phase.LIVE]}

    with pytest.raises(EntityError) as info:
        Publishing(state=Phase.LIVE).to(Phase.DRAFT)
    assert info.value.details["from"] == 2 and info.value.details["to"] == 1
    assert Publishing.model_validate({"state": 2}).state is Phase.LIVE


def test_a_value_that_is_no_state_is_refused() -> None:
    flow = OrderFlow()
    with pytest.raises(ClusterError) as info:
        flow.to("lost")  # type: ignore[arg-type]
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == "state"
    assert flow.state is OrderStatus.CREATED


@pytest.mark.parametrize(("declared", "limit"), [
    ({}, 0),  # nothing declared
    ({"created": {"lost"}}, 0),  # a target that is no state
    ({"lost": {"paid"}}, 0),  # a source that is no state
    ({"created": "paid"}, 0),  # a string is not a collection of states
    ({"created": {"paid"}}, -1),  # a negative history
    ({"created": {"paid"}}, "3"),
])
def test_bad_declarations_are_refused_when_the_class_is_defined(
    declared: Any, limit: Any
) -> None:
    with pytest.raises(ClusterError) as info:
        class Bad(covey.StateMachine[OrderStatus]):
            state: OrderStatus = OrderStatus.CREATED
            transitions = declared
            history_limit = limit
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == ("history_limit" if limit != 0 else "transitions")


class Order(covey.Entity, type="MachineOrder", state=OrderState):
    @covey.rpc(persisted=True)
    async def move(self, to: OrderStatus) -> str:
        self.state.items.append(f"tried {to.value}")  # must not stick when `to` refuses
        self.state.flow.to(to, at=T0)
        return self.state.flow.state.value


async def test_an_entity_caller_gets_invalid_transition_and_the_state_is_kept() -> None:
    async with TestCluster(Order, runners=1, shards=4) as tc:
        order = tc.client(Order, "o1")
        assert await order.move(OrderStatus.PAID) == "paid"
        with pytest.raises(EntityError) as info:
            await order.move(OrderStatus.CREATED)
        assert info.value.reason is Reason.INVALID_TRANSITION
        assert info.value.details["from"] == "paid"
        assert info.value.details["to"] == "created"
        assert info.value.details["allowed"] == ["cancelled", "shipped"]
        assert await order.move(OrderStatus.SHIPPED) == "shipped"
        stored = await tc.client_member.state_of(Order, "o1")
        assert stored is not None and stored.flow.state is OrderStatus.SHIPPED
        assert [h.to_state for h in stored.flow.history] == [OrderStatus.PAID,
                                                             OrderStatus.SHIPPED]
        assert stored.items == ["tried paid", "tried shipped"]
