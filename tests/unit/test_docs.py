"""Every ```python block in ``docs/**/*.md`` and ``README.md`` runs.

Each block is a program of its own: it is written to a file in a fresh temporary
directory and run there by this interpreter, in a subprocess with a timeout and
no ``COVEY_*`` settings, so ``covey.Cluster.from_env()`` opens the embedded
SQLite default (``covey.db``) inside that directory. A block that needs
PostgreSQL says so with the invisible marker ``<!-- docs-test: postgres -->`` on
the line(s) before it; it then runs with ``COVEY_DATABASE_URL`` set to a database
of its own (skipped, loudly, when the test server is down).

Shell, text and other fenced blocks are not run. A block that is not meant to be
a program must not be marked ``python``.

A ```python block made only of pymdownx.snippets include lines
(``--8<-- "examples/shop/step1.py"``, also ``"path:section"``) shows a file of
the repository on the documentation site: it is not run here. Instead the file
must exist and some test under ``tests/`` must name it (its path, or its file
name), so that every snippet the site shows is code a test runs.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A fence may be indented (inside a list item); its code is then dedented.
FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
POSTGRES_MARK = re.compile(r"<!--\s*docs-test:\s*postgres\s*-->\s*\Z")
# one pymdownx.snippets include: --8<-- "path" or "path:section" / "path:start:end"
INCLUDE = re.compile(r"""^--8<--[ \t]+(["'])(?P<path>[^"':]+)(?::[^"']*)?\1[ \t]*$""")
TIMEOUT = 30  # seconds for one block; they take about one
#: SQLite blocks running at once (each is a process of its own, in a directory of its own)
PARALLEL = 3


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository root
    index: int  # 0-based, in the order of the document
    line: int  # where the code starts, 1-based
    code: str
    needs_postgres: bool
    #: the files the block includes when it is made only of snippet include lines
    includes: tuple[str, ...] = ()


def _includes(code: str) -> tuple[str, ...]:
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    matches = [INCLUDE.match(line) for line in lines]
    if not lines or not all(matches):
        return ()
    return tuple(m.group("path") for m in matches if m is not None)


def blocks() -> list[Block]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for index, match in enumerate(FENCE.finditer(text)):
            found.append(Block(
                document=path.relative_to(ROOT).as_posix(),
                index=index,
                line=text.count("\n", 0, match.start(2)) + 1,
                code=textwrap.dedent(match.group(2)),
                needs_postgres=POSTGRES_MARK.search(text, 0, match.start()) is not None,
                includes=_includes(textwrap.dedent(match.group(2))),
            ))
    return found


FOUND = blocks()
#: the blocks that are programs (run below)
BLOCKS = [b for b in FOUND if not b.includes]
#: (document, included path) of every include-only block (checked below)
INCLUDED = sorted({(b.document, path) for b in FOUND for path in b.includes})


def test_the_documents_have_python_blocks() -> None:
    # Guards the extraction itself: a broken pattern would make every test below vanish.
    assert len(BLOCKS) >= 10
    assert {b.document for b in BLOCKS} >= {"README.md", "docs/entities.md", "docs/jobs.md"}


def test_include_lines_are_recognized() -> None:
    assert _includes('--8<-- "examples/shop/step1.py"\n') == ("examples/shop/step1.py",)
    assert _includes("--8<-- 'a/b.py:cart'\n\n--8<-- \"c.py:3:9\"") == ("a/b.py", "c.py")
    # anything else in the block makes it a program again
    assert _includes('--8<-- "a.py"\nprint(1)\n') == ()
    assert _includes("") == ()


@functools.cache
def _test_sources() -> str:
    this = {Path(__file__).resolve(), Path(__file__).resolve().with_name("test_docs_site.py")}
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").rglob("*.py"))
                     if p.resolve() not in this)


@pytest.mark.parametrize(("document", "path"), INCLUDED,
                         ids=[f"{d}:{p}" for d, p in INCLUDED])
def test_included_file_is_run_by_a_test(document: str, path: str) -> None:
    # The site shows the file itself, so this test does not run it: a test must.
    assert (ROOT / path).is_file(), f"{document} includes {path}, which does not exist"
    sources = _test_sources()
    assert path in sources or Path(path).name in sources, (
        f"{document} includes {path}, but no test under tests/ names it: the docs would "
        f"show code nothing runs")


def _id(block: Block) -> str:
    return f"{block.document}[{block.index}]"


def _run(block: Block, directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block as a program in ``directory`` (``TimeoutExpired`` when it hangs)."""
    program = directory / "block.py"
    program.write_text(block.code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(program)], cwd=directory, env=env,
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )


@pytest.fixture(scope="module")
def started(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Any]]]:
    """The SQLite blocks this session selected, started at once, a few at a time.

    Each block is a program of its own in a directory of its own, so they can
    run side by side; the tests then wait for their block's outcome. (Blocks that
    need PostgreSQL run in their test: each gets a database of its own.)
    """
    selected = {_id(item.callspec.params["block"]) for item in request.session.items
                if getattr(item, "originalname", None) == "test_block_runs"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    futures = {_id(b): pool.submit(_run, b, tmp_path_factory.mktemp("block"), env)
               for b in BLOCKS if not b.needs_postgres and _id(b) in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest,
                    started: dict[str, Future[Any]]) -> None:
    try:
        if block.needs_postgres:
            env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
            env["COVEY_DATABASE_URL"] = request.getfixturevalue("fresh_pg_database")
            result = _run(block, tmp_path, env)
        else:
            result = started[_id(block)].result()
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.document}, block at line {block.line}: still running after "
                    f"{TIMEOUT} s\n{exc.stdout!r}\n{exc.stderr!r}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"{block.document}, block at line {block.line} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}",
            pytrace=False,
        )


FAILOVER = """
import asyncio
from covey.testing import TestCluster
from readme_bank import Account, Deposit

async def main() -> None:
    async with TestCluster(Account, runners=3) as cluster:
        account = cluster.client(Account, "acct-1")
        assert await account.deposit(Deposit(txn_id="t1", amount=5)) == 5
        await cluster.kill(cluster.owner_index(Account, "acct-1"))  # crash its runner
        after = await account.deposit(Deposit(txn_id="t2", amount=7))
        assert after == 12, f"the balance after a failover is {after}, not 12"

asyncio.run(main())
"""


def test_the_readme_account_keeps_its_balance_across_a_failover(tmp_path: Path) -> None:
    # The README's first example is what most people copy: its balance must
    # survive the crash of the runner hosting the account.
    readme = next(b for b in BLOCKS if b.document == "README.md")
    (tmp_path / "readme_bank.py").write_text(readme.code, encoding="utf-8")
    (tmp_path / "failover.py").write_text(FAILOVER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    result = subprocess.run(
        [sys.executable, "failover.py"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stderr
