"""Bad input at the edges (issue 8): the ``covey jobs`` CLI and the ASGI request
context middleware.

CLI: a hostile argument gives a clean message and a non-zero exit, never a
traceback, and the store is intact afterwards. Middleware: hostile header bytes
give ``400`` with a JSON error or a documented default, never a ``500`` or an
exception, and the next request is served.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import strategies as st

from covey.cli import main
from covey.context import RequestContextMiddleware
from covey.core import RequestContext, current_context

from ._bad_input import draw

# ---- CLI -----------------------------------------------------------------

CLI_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

#: arguments that must fail cleanly (exit != 0, no traceback)
MUST_FAIL: list[list[str]] = [
    ["status", "abc"],
    ["status", ""],
    ["status", "1.5"],
    ["status", "1\x00"],
    ["status", "0"],
    ["status", "--", "-1"],
    ["status", str(2**63)],
    ["status", str(2**64)],
    ["status", "9" * 100],
    ["cancel", "abc"],
    ["cancel", str(2**63)],
    ["dlq", "retry", str(2**64)],
    ["dlq", "retry", "--", "-5"],
    ["ls", "--state", "bogus"],
    ["ls", "--state", ""],
    ["ls", "--limit", "0"],
    ["ls", "--limit", "abc"],
    ["ls", "--limit", str(10**30)],
    ["dlq", "ls", "--limit", "-1"],
]
#: filters that may fail cleanly or list nothing
MAY_BE_EMPTY: list[list[str]] = [
    ["ls", "--name", "a\x00b"],
    ["ls", "--name", "x" * 100_000],
    ["ls", "--name", "a\udc80b"],
    ["dlq", "ls", "--name", "\x00"],
    ["ls", "--state", "dead", "--name", "\x00"],
]


@pytest.fixture(params=CLI_BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = str(request.getfixturevalue("fresh_pg_database"))
    return {"COVEY_DATABASE_URL": url, "COVEY_SHARDS": "8"}


def cli(env: dict[str, str], args: list[str]) -> Result:
    return CliRunner().invoke(main, ["jobs", *args], env=env)


def _problems(args: list[str], result: Result, *, may_succeed: bool) -> list[str]:
    label = " ".join(repr(a) if len(a) < 40 else f"<{len(a)} chars>" for a in args)
    out = (result.stdout or "") + (result.stderr or "")
    problems = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"covey jobs {label}: unhandled {type(result.exception).__name__}: "
                        f"{str(result.exception)[:200]}")
    if "Traceback" in out:
        problems.append(f"covey jobs {label}: traceback printed")
    if result.exit_code == 0:
        if not may_succeed:
            problems.append(f"covey jobs {label}: exit 0")
        elif "(0)" not in out:
            problems.append(f"covey jobs {label}: exit 0 without an empty listing")
    elif "rror" not in out:
        problems.append(f"covey jobs {label}: exit {result.exit_code} without an error message")
    return problems


def test_cli_refuses_hostile_arguments_cleanly(env: dict[str, str]) -> None:
    problems: list[str] = []
    for args in MUST_FAIL:
        problems += _problems(args, cli(env, args), may_succeed=False)
    for args in MAY_BE_EMPTY:
        problems += _problems(args, cli(env, args), may_succeed=True)
    listing = cli(env, ["ls"])  # the store is intact and the CLI still works
    assert listing.exit_code == 0 and "jobs (0)" in listing.stdout, listing.output
    assert not problems, "\n".join(problems)


# ---- ASGI middleware -----------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SEEN: list[RequestContext] = []


async def app(scope: Any, receive: Any, send: Any) -> None:
    SEEN.append(current_context())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


async def request(middleware: Any, headers: list[tuple[bytes, bytes]],
                  path: str = "/api/x") -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP request through the middleware: status, response headers, body."""
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers,
             "query_string": b"", "asgi": {"version": "3.0"}}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(middleware(scope, receive, send), 5)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers") or []), body


def _clean(value: str | None) -> bool:
    if value is None:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not _CONTROL.search(value) and len(value) <= 4096


HOSTILE_VALUES: list[tuple[str, bytes]] = [
    ("NUL", b"a\x00b"),
    ("CR LF injection", b"acme\r\nX-Evil: 1"),
    ("invalid UTF-8", b"\xff\xfe\xfd"),
    ("truncated UTF-8", b"caf\xc3"),
    ("1 MB", b"t" * 1_000_000),
    ("empty", b""),
    ("spaces", b"   "),
    ("DEL", b"a\x7fb"),
]
HEADERS = [b"x-tenant-id", b"x-request-id", b"traceparent"]


async def _check(middleware: Any, label: str, headers: list[tuple[bytes, bytes]],
                 problems: list[str]) -> None:
    SEEN.clear()
    try:
        status, response_headers, body = await request(middleware, headers)
    except Exception as exc:
        problems.append(f"{label}: the middleware raised {type(exc).__name__}: {exc}"[:300])
        return
    if status == 400:
        try:
            error = json.loads(body)
        except ValueError:
            problems.append(f"{label}: 400 without a JSON body: {body[:80]!r}")
        else:
            if not isinstance(error, dict) or not isinstance(error.get("error"), str):
                problems.append(f"{label}: 400 JSON without an error code: {error!r}"[:200])
        if SEEN:
            problems.append(f"{label}: refused with 400, yet the application ran")
    elif status == 200:
        context = SEEN[-1] if SEEN else None
        if context is None:
            problems.append(f"{label}: 200 but the application did not run")
        else:
            for field in ("tenant_id", "request_id"):
                if not _clean(getattr(context, field)):
                    problems.append(f"{label}: the application saw a hostile {field}: "
                                    f"{getattr(context, field)!r}"[:200])
            if context.trace_id is not None and not re.fullmatch(r"[0-9a-f]{32}",
                                                                 context.trace_id):
                problems.append(f"{label}: the application saw trace id {context.trace_id!r}")
    else:
        problems.append(f"{label}: status {status}")
    echoed = response_headers.get(b"x-request-id", b"")
    if _CONTROL.search(echoed.decode("latin-1")) or len(echoed) > 4096:
        problems.append(f"{label}: echoed a hostile X-Request-ID ({len(echoed)} bytes)")
    status, _, _ = await request(middleware, [(b"x-tenant-id", b"acme"),
                                              (b"x-request-id", b"r-1")])
    if status != 200 or not SEEN or SEEN[-1].tenant_id != "acme":
        problems.append(f"{label}: the next good request was not served ({status})")


@pytest.mark.parametrize("require_tenant", [False, True])
async def test_middleware_refuses_hostile_headers(require_tenant: bool) -> None:
    middleware = RequestContextMiddleware(app, require_tenant=require_tenant)
    problems: list[str] = []
    for name in HEADERS:
        base = [] if name == b"x-tenant-id" else [(b"x-tenant-id", b"acme")]
        for label, value in HOSTILE_VALUES:
            await _check(middleware, f"{name.decode()} {label}", [*base, (name, value)],
                         problems)
        await _check(middleware, f"{name.decode()} twice, different values",
                     [*base, (name, b"one"), (name, b"two")], problems)
    for value in draw(st.binary(max_size=80), 15):
        await _check(middleware, f"x-tenant-id {value!r}", [(b"x-tenant-id", value)], problems)
        await _check(middleware, f"x-request-id {value!r}",
                     [(b"x-tenant-id", b"acme"), (b"x-request-id", value)], problems)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


async def test_middleware_reads_utf8_tenants() -> None:
    """The good side: a UTF-8 tenant is read as UTF-8 (not latin-1)."""
    middleware = RequestContextMiddleware(app, require_tenant=True)
    SEEN.clear()
    status, _, _ = await request(middleware, [(b"x-tenant-id", "café".encode())])
    assert status == 200 and SEEN[-1].tenant_id == "café"
