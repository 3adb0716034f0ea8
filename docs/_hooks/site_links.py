"""Links from the docs to files outside ``docs/`` (examples, README, bench results, tests).

On GitHub ``[examples/bank.py](../examples/bank.py)`` opens the file; in the site there is
no such page. So every such target becomes a page of its own under ``source/``: a
Markdown file (README.md, bench/RESULTS.md) is rendered, any other file is shown as
code (included with pymdownx.snippets). Links are rewritten to those pages when the
page is rendered; a link to a file that does not exist is a warning (the build is
strict, so it fails). A link to a directory (``deploy/helm/covey``) keeps its text only.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

log = get_plugin_logger("covey-links")

SOURCE_DIR = "source"
# [text](target) outside code; the target has no spaces (the docs do not use titles)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, mailto:, ...
FENCE = re.compile(r"^[ \t]*(```|~~~)")
LANGUAGES = {
    ".py": "python", ".html": "html", ".js": "javascript", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".json": "json", ".sql": "sql", ".sh": "bash", ".tpl": "text",
}
NAMED = {"Dockerfile": "dockerfile", "Makefile": "makefile"}

# src_uri of every page -> its path relative to the repository root (set by collect)
_origins: dict[str, str] = {}


def _repo(config: Any) -> Path:
    return Path(config["docs_dir"]).resolve().parent


def _docs_prefix(config: Any) -> str:
    return Path(config["docs_dir"]).resolve().name + "/"


def _is_external(target: str) -> bool:
    return target.startswith(("#", "/")) or SCHEME.match(target) is not None


def _outside_code(markdown: str) -> list[tuple[bool, str]]:
    """The text in chunks, each marked True when it is outside fenced code."""
    chunks: list[tuple[bool, str]] = []
    fence: str | None = None
    current: list[str] = []
    for line in markdown.splitlines(keepends=True):
        opening = FENCE.match(line)
        if fence is None and opening:
            chunks.append((True, "".join(current)))
            current, fence = [line], opening.group(1)
        elif fence is not None and line.strip().startswith(fence) and line.strip() == fence:
            current.append(line)
            chunks.append((False, "".join(current)))
            current, fence = [], None
        else:
            current.append(line)
    chunks.append((fence is None, "".join(current)))
    return chunks


def _resolve(origin: str, target: str) -> tuple[str, str]:
    """(path relative to the repository root, '#anchor' or '') of a link in ``origin``."""
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(origin), path))
    return resolved, f"#{anchor}" if anchor else ""


def _targets(markdown: str, origin: str) -> set[str]:
    found = set()
    for outside, chunk in _outside_code(markdown):
        if outside:
            for match in LINK.finditer(chunk):
                target = match.group("target")
                if not _is_external(target):
                    found.add(_resolve(origin, target)[0])
    return found


def _source_page(repo: Path, path: str) -> str:
    """The Markdown of the page standing for the repository file ``path``."""
    file = repo / path
    if file.suffix == ".md":
        return file.read_text(encoding="utf-8")
    language = NAMED.get(file.name, LANGUAGES.get(file.suffix, "text"))
    return (f"# `{path}`\n\nThe file `{path}` of the repository.\n\n"
            f'```{language}\n--8<-- "{path}"\n```\n')


def collect(files: Files, config: Any) -> Files:
    """Add a page under ``source/`` for every repository file the pages link to."""
    repo, docs = _repo(config), _docs_prefix(config)
    _origins.clear()
    pending: list[tuple[str, str]] = []  # (origin, markdown)
    for file in files.documentation_pages():
        origin = docs + file.src_uri
        _origins[file.src_uri] = origin
        if not file.generated_by:
            pending.append((origin, Path(file.abs_src_path or "").read_text(encoding="utf-8")))
    added: set[str] = set()
    while pending:
        origin, markdown = pending.pop()
        for path in sorted(_targets(markdown, origin)):
            if path.startswith(docs) or path == "." or path.startswith("../"):
                continue  # a doc page (mkdocs checks it) or outside the repository
            if path in added or not (repo / path).is_file():
                continue  # a missing one is reported where it is linked from
            added.add(path)
            src_uri = f"{SOURCE_DIR}/{path}" + ("" if path.endswith(".md") else ".md")
            content = _source_page(repo, path)
            files.append(File.generated(config, src_uri, content=content))
            _origins[src_uri] = path
            if path.endswith(".md"):
                pending.append((path, content))
    return files


def rewrite(markdown: str, page_uri: str, config: Any) -> str:
    """Point the page's links to repository files at their ``source/`` pages."""
    repo, docs = _repo(config), _docs_prefix(config)
    origin = _origins.get(page_uri, docs + page_uri)
    here = posixpath.dirname(page_uri)

    def replace(match: re.Match[str]) -> str:
        target = match.group("target")
        if _is_external(target):
            return match.group(0)
        path, anchor = _resolve(origin, target)
        if path.startswith(docs):  # a doc page: relative to where this page is in the site
            if origin.startswith(docs):
                return match.group(0)
            new = posixpath.relpath(path[len(docs):], here or ".")
            return f"[{match.group('text')}]({new}{anchor})"
        if path.startswith("../") or path == "..":
            return match.group(0)  # outside the repository: mkdocs reports it
        if (repo / path).is_dir():
            return match.group("text")
        if not (repo / path).is_file():
            log.warning("%s links to %r, which is not a file of the repository", origin, target)
            return match.group(0)
        page = f"{SOURCE_DIR}/{path}" + ("" if path.endswith(".md") else ".md")
        return f"[{match.group('text')}]({posixpath.relpath(page, here or '.')}{anchor})"

    return "".join(LINK.sub(replace, chunk) if outside else chunk
                   for outside, chunk in _outside_code(markdown))
