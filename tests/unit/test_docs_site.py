"""The documentation site builds in strict mode, with no warning, and its reference is whole.

``mkdocs build --strict`` (what ``make docs`` runs) fails on a broken link or
anchor, a missing snippet file, a page left out of the nav, a docstring
mkdocstrings cannot read, or a generated reference table that does not match the
code. The build runs once, into a temporary directory; the tests then read the
pages it wrote. The reference pages are generated from the code, so each must
list everything the code has: every ``COVEY_*`` variable, command, metric and
error reason.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

import covey.cli
import covey.core.metrics
from covey.core import CoveyConfig, Reason

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds for the build: 15-45 on two busy cores (mkdocstrings renders the API)
# The first test also waits for the build (a module fixture), beyond the default 120 s bound.
pytestmark = pytest.mark.timeout(TIMEOUT + 60)


@dataclass(frozen=True)
class Build:
    returncode: int
    output: str
    site: Path

    def page(self, path: str) -> str:
        """The text of a built page (``reference/cli`` -> reference/cli/index.html)."""
        return html.unescape((self.site / path / "index.html").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    site = tmp_path_factory.mktemp("site")
    # the theme's notice about its successor is not a warning about the docs
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict",
             "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mkdocs build still running after {TIMEOUT} s\n{exc.stderr!r}",
                    pytrace=False)
    return Build(result.returncode, result.stdout + result.stderr, site)


def test_the_site_builds_strict_without_warnings(build: Build) -> None:
    warnings = [line for line in build.output.splitlines()
                if re.match(r"^(WARNING|ERROR)\b", line)]
    assert build.returncode == 0 and not warnings, (
        f"mkdocs build --strict exited {build.returncode}:\n" + "\n".join(warnings or
                                                                           [build.output]))


def test_the_configuration_reference_lists_every_variable(build: Build) -> None:
    page = build.page("reference/configuration")
    missing = [name for name in CoveyConfig.variables() if name not in page]
    assert not missing, f"not in the configuration reference: {missing}"


def test_the_cli_reference_lists_every_command(build: Build) -> None:
    page = build.page("reference/cli")

    def paths(command: click.Command, path: str) -> list[str]:
        found = [path]
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                found += paths(sub, f"{path} {name}")
        return found

    commands = paths(covey.cli.main, "covey")
    assert len(commands) > 10
    missing = [c for c in commands if f'id="{c.replace(" ", "-")}"' not in page]
    assert not missing, f"no section in the command-line reference: {missing}"


def test_the_metrics_reference_lists_every_metric(build: Build) -> None:
    page = build.page("reference/metrics")
    names = [getattr(covey.core.metrics, n)._name for n in covey.core.metrics.__all__]
    missing = [n for n in names if n not in page]
    assert not missing, f"not in the metrics reference: {missing}"


def test_the_errors_reference_lists_every_reason(build: Build) -> None:
    page = build.page("reference/errors")
    missing = [r.value for r in Reason if f"<code>{r.value}</code>" not in page]
    assert not missing, f"not in the errors reference: {missing}"


@pytest.mark.parametrize("package", ["core", "entities", "jobs", "events", "workflows",
                                     "webhooks", "realtime", "health", "asgi", "testing",
                                     "storage"])
def test_the_api_reference_documents_the_package(build: Build, package: str) -> None:
    # every name the package exports has its own anchor on the package's page
    module = __import__(f"covey.{package}", fromlist=["__all__"])
    page = build.page(f"reference/api/{package}")
    missing = [name for name in module.__all__
               if f'id="covey.{package}.{name}"' not in page]
    assert not missing, f"covey.{package}: no entry for {missing}"
