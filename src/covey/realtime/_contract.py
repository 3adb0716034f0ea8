"""Typed RPC contracts for WebSocket: declared once, served and called from it.

A contract is a class of ``async`` methods whose argument and result are
pydantic models, plus typed server-to-client pushes::

    class Chat(covey.realtime.Contract):
        @covey.realtime.method
        async def send(self, msg: SendMsg) -> MsgId: ...
        @covey.realtime.method
        async def history(self, since: Since) -> AsyncIterator[Msg]: ...   # streamed
        notice = covey.realtime.push(Notice)

The server serves a subclass that overrides the methods (``self.connection`` is
the caller's :class:`~covey.realtime.Connection`); the clients generate their
calls from the declaration; :meth:`Contract.json_schema` describes it for code
generators. A bad declaration (a missing or non-pydantic annotation, a second
argument, a name used twice) is refused when the class is defined, with a
:class:`~covey.RealtimeError` ``invalid_argument`` whose ``details["field"]``
names the method or push.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_args, get_origin

import pydantic
from pydantic.json_schema import models_json_schema

from covey.core import RealtimeError, Reason

if TYPE_CHECKING:
    from covey.realtime._ws_connection import Connection

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=pydantic.BaseModel)

#: the wire protocol a contract is served with (see ``_codec.py``)
PROTOCOL = "covey.v1"
#: names the clients use for their own attributes: a method or push may not take them
RESERVED_NAMES = frozenset({
    "call", "close", "connection", "contract", "json_schema", "on", "reconnects", "state",
    "stream",
})
MAX_NAME_LENGTH = 100
_STREAM_ORIGINS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable,
                   collections.abc.AsyncGenerator)
_MARK = "__covey_method__"


def _refuse(field: str, problem: str) -> RealtimeError:
    return RealtimeError(f"contract {field}: {problem}", reason=Reason.INVALID_ARGUMENT,
                         field=field)


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One method of a contract.

    Attributes:
        name: the method's name (on the wire: the request's ``m``).
        params: the argument's model (``None``: the method takes no argument).
        result: the result's model, or each chunk's when ``streamed`` (``None``:
            the method returns nothing).
        streamed: the reply is a stream of chunks (the method returns an async
            iterator).
        description: the declaration's docstring.
    """

    name: str
    params: type[pydantic.BaseModel] | None
    result: type[pydantic.BaseModel] | None
    streamed: bool
    description: str | None = None


@dataclass(frozen=True, slots=True)
class PushSpec:
    """One server-to-client push of a contract: its ``name`` and payload ``model``."""

    name: str
    model: type[pydantic.BaseModel]
    description: str | None = None


class Push:
    """A typed server-to-client push, declared with :func:`push` in a contract.

    On an implementation's instance it is bound to the connection:
    ``self.notice(Notice(...))`` queues the push (see :meth:`Connection.push`).
    """

    def __init__(self, model: type[pydantic.BaseModel], description: str | None) -> None:
        self.model = model
        self.description = description
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        connection = instance.connection
        name = self.name

        def send(payload: pydantic.BaseModel, *, mid: str | None = None) -> bool:
            return bool(connection.push(name, payload, mid=mid))

        return send


def push(model: type[M], *, description: str | None = None) -> Any:
    """Declare a server-to-client push carrying ``model`` (a pydantic model class).

    Returns:
        A :class:`Push`; the attribute's name is the push's name.
    """
    if not _is_model(model):
        raise _refuse("push", f"push() takes a pydantic model class, not {model!r}")
    return Push(model, description)


def method(fn: F) -> F:
    """Mark an ``async def`` of a contract as a method clients may call.

    It takes one pydantic model argument (or none) and returns a pydantic
    model, ``None``, or an ``AsyncIterator`` of models (a streamed reply).
    """
    if not callable(fn):
        raise _refuse("method", f"@method decorates a function, not {fn!r}")
    setattr(fn, _MARK, True)
    return fn


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _result_of(name: str, hint: Any) -> tuple[type[pydantic.BaseModel] | None, bool]:
    if hint is None or hint is type(None):
        return None, False
    if _is_model(hint):
        return typing.cast(type[pydantic.BaseModel], hint), False
    origin = get_origin(hint)
    if origin in _STREAM_ORIGINS:
        args = get_args(hint)
        if args and _is_model(args[0]):
            return typing.cast(type[pydantic.BaseModel], args[0]), True
    raise _refuse(name, f"returns {hint!r}; expected a pydantic model, None or "
                        "AsyncIterator[<a pydantic model>]")


def _resolve(name: str, fn: Any, doc_owner: str) -> MethodSpec:
    if not name.isidentifier() or name.startswith("_") or len(name) > MAX_NAME_LENGTH:
        raise _refuse(name, "a method name is an identifier without a leading '_'")
    if name in RESERVED_NAMES:
        raise _refuse(name, f"{name!r} is reserved (the clients use it); pick another name")
    if not _is_async(fn):
        raise _refuse(name, f"{doc_owner}.{name} must be 'async def'")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an annotation naming something not importable there
        raise _refuse(name, f"cannot resolve the annotations of {doc_owner}.{name} ({exc}); "
                            "define its models at module level") from None
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    if len(params) > 1 or any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)
                              for p in params):
        raise _refuse(name, f"{doc_owner}.{name} takes at most one positional argument")
    argument: type[pydantic.BaseModel] | None = None
    if params:
        hint = hints.get(params[0].name)
        if not _is_model(hint):
            raise _refuse(name, f"the argument of {doc_owner}.{name} must be annotated with "
                                f"a pydantic model class (found {hint!r})")
        argument = hint
    if "return" not in hints:
        raise _refuse(name, f"{doc_owner}.{name} has no return annotation")
    result, streamed = _result_of(name, hints["return"])
    return MethodSpec(name, argument, result, streamed, inspect.getdoc(fn))


def _same_shape(a: MethodSpec, b: MethodSpec) -> bool:
    return (a.params, a.result, a.streamed) == (b.params, b.result, b.streamed)


class _Declarations(dict[str, Any]):
    """A class body's namespace that refuses a method or push defined twice
    (a plain ``dict`` would let the second silently replace the first)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self and (_declares(self[key]) or _declares(value)):
            raise _refuse(key, f"{key!r} is defined twice in the contract")
        super().__setitem__(key, value)


def _declares(value: Any) -> bool:
    return isinstance(value, Push) or getattr(value, _MARK, False) is True


class _ContractMeta(type):
    @classmethod
    def __prepare__(mcs, name: str, bases: tuple[type, ...], /,
                    **kwargs: Any) -> MutableMapping[str, object]:
        return _Declarations()

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> _ContractMeta:
        return super().__new__(mcs, name, bases, dict(namespace), **kwargs)


class Contract(metaclass=_ContractMeta):
    """Base of a typed WebSocket RPC contract (see the module docstring).

    Subclass it to declare methods (:func:`method`) and pushes (:func:`push`);
    subclass the declaration to implement it (override the methods, no
    decorator needed). The server makes one instance per connection, so
    instance attributes are per-connection state.

    Attributes:
        connection: the connection this instance serves (set by the server
            before any handler runs).
    """

    __covey_methods__: ClassVar[Mapping[str, MethodSpec]] = {}
    __covey_pushes__: ClassVar[Mapping[str, PushSpec]] = {}
    connection: Connection

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        methods: dict[str, MethodSpec] = {}
        pushes: dict[str, PushSpec] = {}
        for base in reversed(cls.__mro__[1:]):
            methods.update(getattr(base, "__covey_methods__", {}))
            pushes.update(getattr(base, "__covey_pushes__", {}))
        for name, value in cls.__dict__.items():
            if isinstance(value, Push):
                _declare_push(cls, name, value, methods, pushes)
            elif getattr(value, _MARK, False) is True:
                spec = _resolve(name, value, cls.__name__)
                if name in pushes or (name in methods and not _same_shape(methods[name], spec)):
                    raise _refuse(name, f"{cls.__name__}.{name} is already declared (an "
                                        "implementation overrides it without changing its types)")
                methods[name] = spec
            elif name in methods:
                _check_override(cls, name, value, methods[name])
            elif name in pushes:
                raise _refuse(name, f"{cls.__name__}.{name} hides the push {name!r}")
        cls.__covey_methods__ = methods
        cls.__covey_pushes__ = pushes

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """A JSON Schema (2020-12) document describing the contract.

        ``$defs`` holds every model; ``methods`` maps each method to its
        ``params`` and ``result`` (a ``$ref``, or ``null`` for none) and
        ``streamed``; ``pushes`` maps each push to its ``payload``.
        """
        return contract_schema(cls)


def _declare_push(cls: type, name: str, value: Push, methods: Mapping[str, MethodSpec],
                  pushes: dict[str, PushSpec]) -> None:
    if not name.isidentifier() or name.startswith("_") or len(name) > MAX_NAME_LENGTH:
        raise _refuse(name, "a push name is an identifier without a leading '_'")
    if name in RESERVED_NAMES:
        raise _refuse(name, f"{name!r} is reserved (the clients use it); pick another name")
    if name in methods or (name in pushes and pushes[name].model is not value.model):
        raise _refuse(name, f"{cls.__name__}.{name} is already declared")
    pushes[name] = PushSpec(name, value.model, value.description)


def _check_override(cls: type, name: str, value: Any, spec: MethodSpec) -> None:
    fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
    if not _is_async(fn) or isinstance(value, staticmethod | classmethod):
        raise _refuse(name, f"{cls.__name__}.{name} implements a contract method: it must be "
                            "an 'async def' instance method")
    if not spec.streamed and inspect.isasyncgenfunction(fn):
        raise _refuse(name, f"{cls.__name__}.{name} is an async generator but the contract "
                            "declares a single result")
    arity = len(inspect.signature(fn).parameters) - 1
    if arity != (0 if spec.params is None else 1):
        raise _refuse(name, f"{cls.__name__}.{name} takes {arity} argument(s); the contract "
                            f"declares {0 if spec.params is None else 1}")


def methods_of(contract: type[Contract]) -> Mapping[str, MethodSpec]:
    """The methods ``contract`` declares, by name."""
    return contract.__covey_methods__


def pushes_of(contract: type[Contract]) -> Mapping[str, PushSpec]:
    """The pushes ``contract`` declares, by name."""
    return contract.__covey_pushes__


def check_contract(contract: Any) -> type[Contract]:
    """``contract`` if it is a contract class with at least one method or push."""
    if not (isinstance(contract, type) and issubclass(contract, Contract)):
        raise _refuse("contract", f"expected a covey.realtime.Contract subclass, not "
                                  f"{contract!r}")
    if not contract.__covey_methods__ and not contract.__covey_pushes__:
        raise _refuse("contract", f"{contract.__name__} declares no method and no push")
    return contract


def contract_schema(contract: type[Contract]) -> dict[str, Any]:
    """The JSON Schema document of ``contract`` (see :meth:`Contract.json_schema`)."""
    methods, pushes = methods_of(contract), pushes_of(contract)
    inputs: list[tuple[type[pydantic.BaseModel], Any]] = []
    for spec in methods.values():
        if spec.params is not None:
            inputs.append((spec.params, "validation"))
        if spec.result is not None:
            inputs.append((spec.result, "serialization"))
    inputs += [(spec.model, "serialization") for spec in pushes.values()]
    refs, top = models_json_schema(list(dict.fromkeys(inputs)),
                                   ref_template="#/$defs/{model}")

    def ref(model: type[pydantic.BaseModel] | None, mode: str) -> dict[str, Any] | None:
        return None if model is None else dict(refs[(model, mode)])  # type: ignore[index]

    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": contract.__name__,
        "x-covey-protocol": PROTOCOL,
        "methods": {
            spec.name: {"params": ref(spec.params, "validation"),
                        "result": ref(spec.result, "serialization"),
                        "streamed": spec.streamed,
                        **({"description": spec.description} if spec.description else {})}
            for spec in methods.values()},
        "pushes": {
            spec.name: {"payload": ref(spec.model, "serialization"),
                        **({"description": spec.description} if spec.description else {})}
            for spec in pushes.values()},
        "$defs": top.get("$defs", {}),
    }
    if contract.__doc__:  # a class's own docstring (not inherited)
        document["description"] = inspect.cleandoc(contract.__doc__)
    return document
