"""mkdocs hooks of covey's documentation site (``hooks:`` in mkdocs.yml).

Two jobs, each in a module of its own beside this one:

- ``site_reference``: the reference tables generated from the code (configuration
  from ``CoveyConfig``, the ``covey`` command line, metrics, error reasons), put
  where a page has a ``<!-- covey:generate NAME -->`` marker;
- ``site_links``: links to repository files outside ``docs/`` (examples, README,
  bench results, tests) pointed at pages under ``source/`` showing those files.
"""

from __future__ import annotations

from typing import Any

# mkdocs puts this file's directory on sys.path while it loads the hook
import site_links
import site_reference
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page


def on_files(files: Files, config: Any) -> Files:
    return site_links.collect(files, config)


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    markdown = site_reference.expand(markdown, page.file.src_uri)
    return site_links.rewrite(markdown, page.file.src_uri, config)
