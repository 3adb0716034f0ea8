"""Every ``Example::`` block in the docstring of a public name runs.

The API reference (``make docs``) renders these docstrings, so their examples are
documentation snippets too: each runs as a program of its own, in a subprocess.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

#: the packages whose public names the API reference documents (docs/reference/api)
PACKAGES = ["covey", "covey.asgi", "covey.context", "covey.core", "covey.dashboard",
            "covey.entities", "covey.events", "covey.health", "covey.jobs", "covey.realtime",
            "covey.singletons", "covey.storage", "covey.testing", "covey.webhooks",
            "covey.workflows"]
EXAMPLE = re.compile(r"^( *)Example::\n\n((?:\1    .*\n|\n)+)", re.MULTILINE)


def documented() -> Iterator[tuple[str, object]]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", []):
            found = getattr(module, name)
            yield f"{package}.{name}", found
            if inspect.isclass(found):
                for attribute, member in vars(found).items():
                    if callable(member) and not attribute.startswith("_"):
                        yield f"{package}.{name}.{attribute}", member


def examples() -> dict[str, str]:
    found: dict[str, str] = {}
    seen: set[int] = set()
    for where, obj in documented():
        if id(obj) in seen:  # re-exported: covey.StateMachine is covey.entities.StateMachine
            continue
        seen.add(id(obj))
        doc = inspect.getdoc(obj) if inspect.isclass(obj) or callable(obj) else None
        if not doc or "Example::" not in doc:
            continue
        for n, match in enumerate(EXAMPLE.finditer(doc + "\n")):
            found.setdefault(f"{where}[{n}]", textwrap.dedent(match.group(2)))
    return found


EXAMPLES = examples()


def test_the_reference_has_examples() -> None:
    # guards the extraction: a broken pattern would make the test below vanish
    assert {"covey.StateMachine[0]", "covey.upcaster[0]"} <= set(EXAMPLES)


@pytest.mark.parametrize("where", sorted(EXAMPLES))
def test_example_runs(where: str) -> None:
    done = subprocess.run([sys.executable, "-c", EXAMPLES[where]], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{where}:\n{EXAMPLES[where]}\n{done.stderr}"
