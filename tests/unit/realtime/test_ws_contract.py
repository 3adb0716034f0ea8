"""Contracts: a bad declaration is refused when the class is defined; the JSON Schema
describes every method and push."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema
import pytest

from covey.core import ClusterError, Reason
from covey.realtime._contract import Contract, method, methods_of, push, pushes_of
from covey.realtime._ws_server import websocket_app

from ._ws_serving import Chat, ChatImpl, Msg, MsgId, Notice, SendMsg, Since


class Plain:
    pass


def _refused(declare: Callable[[], Any], field: str, words: str) -> None:
    with pytest.raises(ClusterError) as info:
        declare()
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details.get("field") == field, info.value
    assert words in str(info.value), str(info.value)


def test_the_declaration_is_read_from_the_annotations() -> None:
    methods = methods_of(Chat)
    assert list(methods) == ["send", "history", "whoami", "fail"]
    assert (methods["send"].params, methods["send"].result, methods["send"].streamed) == (
        SendMsg, MsgId, False)
    assert (methods["history"].params, methods["history"].result,
            methods["history"].streamed) == (Since, Msg, True)
    assert methods["whoami"].params is None
    assert methods["fail"].result is None
    assert pushes_of(Chat)["notice"].model is Notice
    assert methods_of(ChatImpl) == methods  # an implementation keeps the declaration


def test_missing_or_wrong_annotations_are_refused() -> None:
    def no_annotation() -> None:
        class C(Contract):
            @method
            async def send(self, msg) -> MsgId: ...  # type: ignore[no-untyped-def]

    def not_pydantic() -> None:
        class C(Contract):
            @method
            async def send(self, msg: Plain) -> MsgId: ...

    def no_return() -> None:
        class C(Contract):
            @method
            async def send(self, msg: SendMsg): ...  # type: ignore[no-untyped-def]

    def bad_return() -> None:
        class C(Contract):
            @method
            async def send(self, msg: SendMsg) -> int: ...

    def bad_stream() -> None:
        class C(Contract):
            @method
            async def send(self, msg: SendMsg) -> AsyncIterator[int]: ...

    def two_args() -> None:
        class C(Contract):
            @method
            async def send(self, msg: SendMsg, other: SendMsg) -> MsgId: ...

    def not_async() -> None:
        class C(Contract):
            @method
            def send(self, msg: SendMsg) -> MsgId: ...

    _refused(no_annotation, "send", "pydantic model")
    _refused(not_pydantic, "send", "pydantic model")
    _refused(no_return, "send", "no return annotation")
    _refused(bad_return, "send", "expected a pydantic model")
    _refused(bad_stream, "send", "AsyncIterator")
    _refused(two_args, "send", "at most one")
    _refused(not_async, "send", "async def")


def test_names_used_twice_or_reserved_are_refused() -> None:
    def twice() -> None:
        class C(Contract):
            @method
            async def send(self, msg: SendMsg) -> MsgId: ...

            @method
            async def send(self, msg: SendMsg) -> MsgId: ...  # type: ignore[no-redef]  # noqa: F811

    def method_and_push() -> None:
        class C(Contract):
            @method
            async def notice(self) -> None: ...

            notice = push(Notice)  # type: ignore[assignment]  # noqa: F811

    def redeclared_with_other_types() -> None:
        class C(Chat):
            @method
            async def send(self, msg: Since) -> MsgId: ...  # type: ignore[override]

    def reserved() -> None:
        class C(Contract):
            @method
            async def close(self) -> None: ...

    def bad_push() -> None:
        class C(Contract):
            notice = push(Plain)  # type: ignore[type-var]

    _refused(twice, "send", "defined twice")
    _refused(method_and_push, "notice", "defined twice")
    _refused(redeclared_with_other_types, "send", "already declared")
    _refused(reserved, "close", "reserved")
    _refused(bad_push, "push", "pydantic model")


def test_an_implementation_must_match_the_declaration() -> None:
    def sync_impl() -> None:
        class C(Chat):
            def send(self, msg: SendMsg) -> MsgId:  # type: ignore[override]
                return MsgId(id=1)

    def wrong_arity() -> None:
        class C(Chat):
            async def whoami(self, extra: SendMsg) -> Notice:  # type: ignore[override]
                return Notice(text="")

    def generator_for_unary() -> None:
        class C(Chat):
            async def send(self, msg: SendMsg):  # type: ignore[no-untyped-def, override]
                yield MsgId(id=1)

    _refused(sync_impl, "send", "async def")
    _refused(wrong_arity, "whoami", "argument")
    _refused(generator_for_unary, "send", "async generator")


def test_serving_something_else_than_a_contract_is_refused() -> None:
    class Empty(Contract):
        pass

    _refused(lambda: websocket_app(Plain), "contract", "Contract subclass")  # type: ignore[arg-type]
    _refused(lambda: websocket_app(Empty), "contract", "no method")
    with pytest.raises(ClusterError) as info:
        websocket_app(ChatImpl, max_frame=0)
    assert info.value.details["field"] == "max_frame"
    with pytest.raises(ClusterError) as info:
        websocket_app(ChatImpl, rate=float("nan"))
    assert info.value.details["field"] == "rate"


def test_the_json_schema_describes_every_method_and_push() -> None:
    schema = Chat.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "Chat"
    assert schema["description"] == "A small chat."
    assert schema["x-covey-protocol"] == "covey.v1"
    defs = schema["$defs"]

    def model(ref: dict[str, str] | None) -> str | None:
        if ref is None:
            return None
        name = ref["$ref"].removeprefix("#/$defs/")
        assert name in defs
        return str(defs[name]["title"])

    send = schema["methods"]["send"]
    # SendMsg is read as an argument and written inside MsgId: pydantic names its two
    # modes apart where they differ (a Decimal is read from a number or a string)
    assert (model(send["params"]), model(send["result"]), send["streamed"],
            send["description"]) == ("SendMsg", "MsgId", False, "Post a message; its id.")
    history = schema["methods"]["history"]
    assert (model(history["params"]), model(history["result"]), history["streamed"]) == (
        "Since", "Msg", True)
    assert schema["methods"]["whoami"]["params"] is None
    assert schema["methods"]["fail"]["result"] is None
    assert model(schema["pushes"]["notice"]["payload"]) == "Notice"
    assert schema["pushes"]["notice"]["description"] == "Something happened."
    assert {d["title"] for d in defs.values()} == {"SendMsg", "MsgId", "Since", "Msg", "Notice"}

    # the definitions validate what the wire carries
    resolver_doc = {"$defs": schema["$defs"]}
    send_params = {**resolver_doc, **schema["methods"]["send"]["params"]}
    jsonschema.validate({"text": "hi", "amount": "1.50"}, send_params)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"txt": "hi"}, send_params)
    assert ChatImpl.json_schema()["methods"] == schema["methods"]  # the implementation's


def test_a_contract_with_a_model_that_is_both_argument_and_result() -> None:
    class Echo(Contract):
        @method
        async def echo(self, msg: Notice) -> Notice: ...

    schema = Echo.json_schema()
    assert schema["methods"]["echo"]["params"] == schema["methods"]["echo"]["result"]
    assert "description" not in schema  # Contract's own docstring is not inherited
    assert json.loads(json.dumps(schema)) == schema  # plain JSON, ready to write to a file
