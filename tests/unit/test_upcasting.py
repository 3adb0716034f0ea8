"""State versions and upcasters: chains, unknown future versions, failures, gaps."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, EntityError, Reason, SerializationError
from covey.core.runtime import check_upcasters, state_version, upcast, validate
from covey.testing import TestCluster


class Line(BaseModel):
    sku: str
    qty: int


class CartV3(BaseModel):
    """v1: items: list[str]; v2: lines with qty; v3: lines + a currency."""

    covey_version: ClassVar[int] = 3
    lines: list[Line] = []
    currency: str = "EUR"


@covey.upcaster(CartV3, from_version=1)
def items_became_lines(data: dict[str, Any]) -> dict[str, Any]:
    items = data.pop("items", [])
    return {**data, "lines": [{"sku": item, "qty": 1} for item in items]}


@covey.upcaster(CartV3, from_version=2)
def currency_added(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "USD"}  # everything before v3 was priced in dollars


def test_a_model_without_a_version_is_version_1() -> None:
    assert state_version(Line) == 1
    assert state_version(CartV3) == 3


def test_the_chain_runs_in_order_from_any_stored_version() -> None:
    v1 = {"items": ["apple", "pear"]}
    v3: CartV3 = validate(upcast(CartV3, v1, 1), CartV3)
    assert v3 == CartV3(lines=[Line(sku="apple", qty=1), Line(sku="pear", qty=1)],
                        currency="USD")
    from_v2 = upcast(CartV3, {"lines": [{"sku": "fig", "qty": 2}]}, 2)
    assert from_v2 == {"lines": [{"sku": "fig", "qty": 2}], "currency": "USD"}
    current = {"lines": [], "currency": "CHF"}
    assert upcast(CartV3, current, 3) is current  # nothing to do: untouched


def test_a_future_version_is_refused_with_the_versions() -> None:
    with pytest.raises(EntityError) as info:
        upcast(CartV3, {"lines": []}, 4)
    assert info.value.reason is Reason.STATE_VERSION_UNKNOWN
    assert not info.value.retryable
    assert info.value.details == {"type": "CartV3", "stored_version": 4, "known_version": 3}


def test_an_upcaster_that_raises_is_a_serialization_error_naming_it() -> None:
    class Broken(BaseModel):
        covey_version: ClassVar[int] = 2
        n: int = 0

    @covey.upcaster(Broken, from_version=1)
    def needs_n(data: dict[str, Any]) -> dict[str, Any]:
        return {"n": data["count"] + 1}  # KeyError for data without "count"

    with pytest.raises(SerializationError) as info:
        upcast(Broken, {"total": 1}, 1)
    assert info.value.reason is Reason.PAYLOAD_INVALID
    assert info.value.details["upcaster"].endswith("needs_n")
    assert info.value.details["from_version"] == 1
    assert info.value.details["type"].endswith("Broken")
    assert "needs_n" in str(info.value) and "KeyError" in str(info.value)


def test_an_upcaster_must_return_a_dict() -> None:
    class Listed(BaseModel):
        covey_version: ClassVar[int] = 2

    @covey.upcaster(Listed, from_version=1)
    def wrong(data: dict[str, Any]) -> dict[str, Any]:
        return None  # type: ignore[return-value]

    with pytest.raises(SerializationError) as info:
        upcast(Listed, {}, 1)
    assert info.value.details["upcaster"].endswith("wrong")


def test_gaps_are_named() -> None:
    class Gappy(BaseModel):
        covey_version: ClassVar[int] = 4

    @covey.upcaster(Gappy, from_version=2)
    def two_to_three(data: dict[str, Any]) -> dict[str, Any]:
        return data

    with pytest.raises(ClusterError) as info:
        check_upcasters(Gappy)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == "upcaster"
    assert info.value.details["missing"] == [1, 3]
    with pytest.raises(ClusterError) as info:  # reading an old snapshot says the same
        upcast(Gappy, {}, 2)
    assert info.value.details["missing"] == [1, 3]
    check_upcasters(CartV3)  # complete: fine
    check_upcasters(Line)  # version 1 needs none


@pytest.mark.parametrize("from_version", [0, -1, 3, 4, True, "1", 1.0])
def test_a_from_version_outside_the_model_is_refused_at_decoration(from_version: Any) -> None:
    class Model(BaseModel):
        covey_version: ClassVar[int] = 3

    with pytest.raises(ClusterError) as info:
        covey.upcaster(Model, from_version=from_version)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == "from_version"


def test_two_upcasters_for_one_step_are_refused() -> None:
    with pytest.raises(ClusterError) as info:
        @covey.upcaster(CartV3, from_version=1)
        def again(data: dict[str, Any]) -> dict[str, Any]:
            return data
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["from_version"] == 1
    # the first one still runs
    assert upcast(CartV3, {"items": ["a"]}, 1)["lines"] == [{"sku": "a", "qty": 1}]


def test_a_version_declared_as_a_field_or_not_an_int_is_refused() -> None:
    class AsField(BaseModel):
        covey_version: int = 2

    class NotInt(BaseModel):
        covey_version: ClassVar[Any] = "2"

    for tp in (AsField, NotInt):
        with pytest.raises(ClusterError) as info:
            state_version(tp)
        assert info.value.details["field"] == "covey_version"
        with pytest.raises(ClusterError):
            covey.upcaster(tp, from_version=1)


def test_versions_belong_to_one_class() -> None:
    class V2(BaseModel):
        covey_version: ClassVar[int] = 2

    class Child(V2):
        pass

    @covey.upcaster(V2, from_version=1)
    def up(data: dict[str, Any]) -> dict[str, Any]:
        return {"up": True}

    assert upcast(V2, {}, 1) == {"up": True}
    with pytest.raises(ClusterError) as info:  # the subclass has its own (empty) chain
        check_upcasters(Child)
    assert info.value.details["missing"] == [1]


class GapState(BaseModel):
    covey_version: ClassVar[int] = 3


@covey.upcaster(GapState, from_version=1)
def gap_one_to_two(data: dict[str, Any]) -> dict[str, Any]:
    return data


class GapEntity(covey.Entity, type="UpcastGap", state=GapState):
    @covey.rpc
    async def ping(self) -> str:
        return "pong"


async def test_cluster_start_refuses_a_state_type_with_a_gap() -> None:
    with pytest.raises(ClusterError) as info:
        async with TestCluster(GapEntity, runners=1, shards=4):
            pass
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == "upcaster"
    assert info.value.details["missing"] == [2]
    assert "GapState" in str(info.value)
