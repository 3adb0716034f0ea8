"""The generated reference tables: configuration, command line, metrics, errors.

A page asks for one with a marker line, ``<!-- covey:generate configuration -->``; the
hook replaces it with tables read from the code itself when the site is built, so the
reference cannot drift from it. An unknown marker is a warning (which fails the build).
covey is imported only when a page asks for a table, not when the hook loads.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, get_type_hints

import click
import griffe
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("covey-reference")

MARKER = re.compile(r"^<!--\s*covey:generate\s+(?P<name>[\w-]+)\s*-->[ \t]*$", re.MULTILINE)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no pipes, no raw HTML."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else "*(empty)*"


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n", 1)[0].split())


def _attributes(cls: type[Any]) -> dict[str, str]:
    """The ``Attributes:`` section of a class's Google-style docstring, by name."""
    parsed = griffe.Docstring(inspect.getdoc(cls) or "", parser="google").parse()
    return {attribute.name: attribute.description
            for section in parsed if section.kind is griffe.DocstringSectionKind.attributes
            for attribute in section.value}


# --- configuration -------------------------------------------------------------------------


def _settings(cls: type[Any], path: str = "") -> Iterator[tuple[str, type[Any], str, Any, str]]:
    """(group path, its class, field name, type, description) in declaration order.

    The same walk as ``CoveyConfig.variables()`` (nested dataclasses depth first), so
    the two zip; the variable names themselves come from ``variables()``.
    """
    hints = get_type_hints(cls)
    described = _attributes(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _settings(tp, f"{path}{f.name}.")
        else:
            yield path, cls, f.name, tp, described.get(f.name, "")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def configuration() -> str:
    from covey.core import CoveyConfig

    rows = list(_settings(CoveyConfig))
    variables = list(CoveyConfig.variables().items())  # the names covey really reads
    if len(rows) != len(variables):
        log.warning("CoveyConfig has %d settings but variables() lists %d", len(rows),
                    len(variables))
    lines: list[str] = []
    current: str | None = None
    for (group, cls, name, tp, description), (variable, default) in zip(rows, variables,
                                                                        strict=False):
        if not variable.endswith("_" + name.upper()):
            log.warning("setting %s%s does not match variable %s", group, name, variable)
        if not description:
            log.warning("setting %s%s has no description in the Attributes: of %s",
                        group, name, cls.__name__)
        if group != current:
            current = group
            heading = (f"`{group.rstrip('.')}`: [`{cls.__name__}`][covey.core.{cls.__name__}]"
                       if group else "Top level: [`CoveyConfig`][covey.core.CoveyConfig]")
            lines += ["", f"## {heading}", "", _summary(cls), "",
                      "| variable | type | default | description |", "|---|---|---|---|"]
        unset = not default and "None" in _type_name(tp)
        lines.append(f"| `{variable}` | `{_type_name(tp)}` | "
                     f"{'*unset*' if unset else _code(default)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


# --- command line --------------------------------------------------------------------------


def _commands(command: click.Command, ctx: click.Context) -> Iterator[click.Context]:
    yield ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _commands(sub, click.Context(sub, info_name=name, parent=ctx))


def _help(text: str) -> str:
    """click help text as Markdown paragraphs (``\\b`` marks a block kept as is)."""
    out = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b\n"):
            out.append("```text\n" + paragraph[2:] + "\n```")
        else:
            out.append(html.escape(" ".join(paragraph.split()), quote=False))
    return "\n\n".join(out)


def _kind(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in kind.choices)
    if isinstance(kind, click.IntRange | click.FloatRange):
        low = "" if kind.min is None else f"{kind.min}{'<' if kind.min_open else '<='}"
        high = "" if kind.max is None else f"{'<' if kind.max_open else '<='}{kind.max}"
        return f"{kind.name.split()[0]} {low}x{high}"
    return kind.name


def _default(param: click.Parameter, ctx: click.Context) -> str:
    default = param.get_default(ctx, call=False)
    # nothing to show: no default (click's UNSET sentinel or None), an off flag, a factory
    if default is None or (isinstance(default, enum.Enum) and default.name == "UNSET"):
        return ""
    if default in (False, ()) or callable(default):
        return ""
    return f"`{default}`"


def _parameter_row(param: click.Parameter, ctx: click.Context) -> str:
    if isinstance(param, click.Argument):
        name, kind, help_text = f"`{param.human_readable_name}`", "argument", ""
    else:
        assert isinstance(param, click.Option)
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        kind = "flag" if param.is_flag else _kind(param)
        help_text = param.help or ""
    needed = "yes" if param.required else ""
    return f"| {name} | {kind} | {needed} | {_default(param, ctx)} | {_cell(help_text)} |"


def cli() -> str:
    from covey.cli import main

    lines: list[str] = []
    for ctx in _commands(main, click.Context(main, info_name="covey")):
        command = ctx.command
        lines += ["", f"## `{ctx.command_path}`", ""]
        if command.help:
            lines += [_help(command.help), ""]
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines += ["```text", f"{ctx.command_path} {usage}".rstrip(), "```", ""]
        # --help is on every command; the page says so once, at the top
        helps = command.get_help_option(ctx)
        params = [p for p in command.get_params(ctx)
                  if not getattr(p, "hidden", False) and p is not helps]
        if params:
            lines += ["| parameter | type | required | default | description |",
                      "|---|---|---|---|---|"]
            lines += [_parameter_row(p, ctx) for p in params]
        if isinstance(command, click.Group):
            subs = [c for c in command.list_commands(ctx)]
            lines += ["", "Commands: " + ", ".join(
                f"[`{n}`](#{_slug(f'{ctx.command_path} {n}')})" for n in subs) + "."]
    return "\n".join(lines) + "\n"


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (``covey jobs list`` -> covey-jobs-list)."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


# --- metrics -------------------------------------------------------------------------------


def metrics() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    module = importlib.import_module("covey.core.metrics")
    found = [m for m in vars(module).values() if isinstance(m, MetricWrapperBase)]
    if len(found) != len(module.__all__):
        log.warning("covey.core.metrics defines %d metrics but exports %d", len(found),
                    len(module.__all__))
    lines = ["| metric | type | labels | description |", "|---|---|---|---|"]
    for metric in sorted(found, key=lambda m: m._name):
        kind = metric._type
        # what a scrape shows: counters get _total; histograms _bucket, _sum and _count
        name = metric._name + ("_total" if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        lines.append(f"| `{name}` | {kind} | {labels} | {_cell(metric._documentation)} |")
    return "\n".join(lines) + "\n"


# --- errors --------------------------------------------------------------------------------


def _subclasses(cls: type[Any]) -> Iterator[tuple[int, type[Any]]]:
    def walk(c: type[Any], depth: int) -> Iterator[tuple[int, type[Any]]]:
        yield depth, c
        for sub in sorted(c.__subclasses__(), key=lambda s: s.__name__):
            if sub.__module__.startswith("covey.") and not sub.__name__.startswith("_"):
                yield from walk(sub, depth + 1)
    return walk(cls, 0)


def errors() -> str:
    import covey.asgi
    import covey.core
    from covey.core import ClusterError, Reason

    # every covey module, so that subclasses defined outside core are found too
    for name in ("entities", "jobs", "events", "workflows", "webhooks", "realtime"):
        importlib.import_module(f"covey.{name}")
    lines = ["## Reasons", "",
             "The HTTP answer is what `covey.asgi.install` sends "
             "([`covey.asgi.STATUS`][covey.asgi.STATUS]); *retryable* is "
             "[`ClusterError.retryable`][covey.core.ClusterError.retryable].", "",
             "| reason | HTTP status | `Retry-After` | retryable |", "|---|---|---|---|"]
    for reason in Reason:
        answer = covey.asgi.status_of(reason)
        retry = f"{answer.retry_after} s" if answer.retry_after is not None else ""
        retryable = "yes" if ClusterError("", reason=reason).retryable else ""
        lines.append(f"| `{reason.value}` | {answer.status} | {retry} | {retryable} |")
    lines += ["", "## Error classes", "",
              "Every error covey raises is a `ClusterError`; the subclasses let an `except` "
              "clause be narrow. Each has a default reason and may carry another one.", "",
              "| class | default reason | description |", "|---|---|---|"]
    for depth, cls in _subclasses(ClusterError):
        exported = f"covey.core.{cls.__name__}" if hasattr(covey.core, cls.__name__) else ""
        name = f"[`{cls.__name__}`][{exported}]" if exported else f"`{cls.__name__}`"
        indent = "&nbsp;&nbsp;&nbsp;&nbsp;" * depth
        lines.append(f"| {indent}{name} | `{cls.default_reason.value}` | "
                     f"{_cell(_summary(cls))} |")
    return "\n".join(lines) + "\n"


# --- the top-level namespace ---------------------------------------------------------------


def toplevel() -> str:
    """Every name of the ``covey`` namespace, linked to where it is documented.

    For the API index page (reference/api/index.md): a package's page is
    ``<package>.md`` beside it; ``covey.cluster`` (the ``Cluster``) is on the index.
    """
    import covey

    lines = ["| name | defined in |", "|---|---|"]
    for name in covey.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(covey, name)
        module = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "")
        package = ".".join(module.split(".")[:2])
        page = "index.md" if package == "covey.cluster" else f"{package.split('.')[1]}.md"
        if inspect.ismodule(obj):
            lines.append(f"| [`covey.{name}`]({page}) | [`{package}`]({page}) |")
        else:
            target = "covey.Cluster" if page == "index.md" else f"{package}.{name}"
            lines.append(f"| [`covey.{name}`][{target}] | [`{package}`]({page}) |")
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "configuration": configuration, "cli": cli, "metrics": metrics, "errors": errors,
    "toplevel": toplevel,
}


def expand(markdown: str, page_uri: str) -> str:
    """Replace every marker of the page with its generated Markdown."""
    def replace(match: re.Match[str]) -> str:
        generator = GENERATORS.get(match.group("name"))
        if generator is None:
            log.warning("%s: unknown generated section %r (known: %s)", page_uri,
                        match.group("name"), ", ".join(GENERATORS))
            return match.group(0)
        try:
            return generator()
        except Exception as exc:  # one clear warning (the build fails) instead of a traceback
            log.warning("%s: generating %r failed: %s: %s", page_uri, match.group("name"),
                        type(exc).__name__, exc)
            return match.group(0)
    return MARKER.sub(replace, markdown)
