"""A griffe extension: Sphinx roles in covey's docstrings as links in the API reference.

covey's docstrings are Google style but name other objects the Sphinx way
(``:class:`Entity```, ``:meth:`~Cluster.send```, ``:mod:`covey.health```), which
Markdown would print as is. Each role becomes inline code that links to the object
when the reference documents it: the name is resolved in the docstring owner's scope
(as Sphinx would) and the link is an *optional* autorefs reference, so a name that
is not on any page (a private helper) stays plain code instead of failing the build.
A reST ``::`` ending a paragraph before an indented block becomes ``:``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(?P<body>[^`]+)`")
EXPLICIT = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")
LITERAL_INTRO = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _target(owner: griffe.Object, name: str) -> str:
    """The full path of ``name`` as seen from ``owner`` (``name`` itself if unresolved)."""
    name = name.lstrip(".").removesuffix("()")
    if name.startswith("covey.") or name == "covey":
        return name
    first, _, rest = name.partition(".")
    try:
        resolved = owner.resolve(first)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
        return name
    return f"{resolved}.{rest}" if rest else resolved


def _link(owner: griffe.Object, body: str) -> str:
    explicit = EXPLICIT.match(body)
    if explicit:
        title, name = explicit.group("title"), explicit.group("target")
    else:
        name = body.lstrip("~")
        title = name.rsplit(".", 1)[-1] if body.startswith("~") else name
    identifier = html.escape(_target(owner, name.lstrip("~")), quote=True)
    return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'


def _rewrite(obj: griffe.Object) -> None:
    docstring = obj.docstring
    if docstring is None or not docstring.value:
        return
    owner = obj if obj.is_module or obj.is_class else (obj.parent or obj)
    value = ROLE.sub(lambda m: _link(owner, m.group("body")), docstring.value)
    docstring.value = LITERAL_INTRO.sub(":", value)


def _walk(obj: griffe.Object) -> None:
    _rewrite(obj)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg)
