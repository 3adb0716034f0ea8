"""Ids in JSON: strings, so JavaScript clients do not corrupt them.

covey's ids (snowflakes: job ids, message ids, request ids) are 64-bit integers,
most of them above 2^53, the largest integer a JavaScript ``number`` holds
exactly: ``JSON.parse('{"id": 7212345678901234567}')`` silently rounds it to
``7212345678901234000``. covey therefore writes every id into JSON as a
*string* of its decimal digits, always (not only when it is large: a field whose
type depends on its value breaks typed clients). Two helpers let applications do
the same:

- :data:`JsonId`: a pydantic field type, ``int`` in Python, a string in JSON
  (FastAPI response models); it accepts either form on input.
- :func:`json_safe`: for hand-built dicts, turns every integer outside
  JavaScript's safe range into its string; smaller integers stay numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer a JavaScript ``number`` (an IEEE double) holds exactly."""


def _parse_id(value: object) -> object:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


JsonId = Annotated[
    int,
    BeforeValidator(_parse_id),
    PlainSerializer(lambda value: str(value), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": "^-?[0-9]+$",
                    "description": "a 64-bit id as a decimal string"}),
]
"""An id field: ``int`` in Python, a decimal string in JSON (both accepted in)."""


def json_safe(value: Any) -> Any:
    """``value`` with every integer beyond ±(2^53 - 1) replaced by its string.

    Walks dicts, lists and tuples (tuples become lists, as in JSON); booleans
    and other values are left as they are.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value) if abs(value) > MAX_SAFE_INTEGER else value
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
