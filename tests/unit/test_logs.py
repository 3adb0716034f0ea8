"""covey's logs: one call (or COVEY_LOG_*) makes them visible; JSON lines carry context."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import covey
from covey.core import ConfigError, CoveyConfig, LogOptions
from covey.core.runtime import configure_from_options, note_runner

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("covey.test")


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Each test ends with logging as it found it."""
    root, ours = logging.getLogger(), logging.getLogger("covey")
    saved = (list(root.handlers), root.level, list(ours.handlers), ours.level, ours.propagate)
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(saved[3])
    ours.propagate = saved[4]


def bare_root() -> None:
    """An unconfigured root logger, as a process under uvicorn has (pytest's capture
    handler would count as "the application configured logging")."""
    logging.getLogger().handlers[:] = []


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


CONTEXT = covey.RequestContext(
    tenant_id="acme", request_id="req-7", trace_id="0af7651916cd43dd8448eb211c80319c",
    span_id="b7ad6b7169203331",
    cluster=covey.ClusterPlacement(runner_id="10.0.0.5:7400", shard_id="default:17",
                                   entity="Account/a-1"))


def test_text_lines_are_readable_and_carry_the_context() -> None:
    stream = io.StringIO()
    covey.configure_logging("INFO", stream=stream)
    log.debug("not shown at INFO")
    log.info("outside any request")
    with covey.use_context(CONTEXT):
        log.warning("deposit %d applied", 5)
    first, second = lines(stream)
    assert first.endswith("INFO covey.test: outside any request")
    assert second.endswith(
        "WARNING covey.test: deposit 5 applied [tenant=acme request_id=req-7 "
        "trace_id=0af7651916cd43dd8448eb211c80319c span_id=b7ad6b7169203331 "
        "runner=10.0.0.5:7400 shard=default:17 entity=Account/a-1]")


def test_json_lines_carry_tenant_request_trace_runner_and_shard() -> None:
    stream = io.StringIO()
    covey.configure_logging("DEBUG", json=True, stream=stream)
    with covey.use_context(CONTEXT):
        log.debug("handled", extra={"attempt": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    handled, failed = (json.loads(line) for line in lines(stream))
    assert handled["level"] == "DEBUG" and handled["logger"] == "covey.test"
    assert handled["message"] == "handled" and handled["attempt"] == 2
    assert {k: handled[k] for k in ("tenant", "request_id", "trace_id", "span_id", "runner",
                                    "shard", "entity")} == {
        "tenant": "acme", "request_id": "req-7",
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
        "runner": "10.0.0.5:7400", "shard": "default:17", "entity": "Account/a-1"}
    assert handled["ts"].endswith("Z")
    assert "tenant" not in failed  # only what is known
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc"]


def test_the_active_opentelemetry_span_gives_the_trace_id() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    stream = io.StringIO()
    covey.configure_logging(json=True, stream=stream)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        log.info("inside a span")
    context = span.get_span_context()
    line = json.loads(lines(stream)[0])
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_a_process_hosting_one_runner_names_it_on_every_line() -> None:
    stream = io.StringIO()
    covey.configure_logging(json=True, stream=stream)
    note_runner("10.0.0.9:7400")
    try:
        log.info("one runner")
        note_runner("10.0.0.9:7401")
        log.info("two runners: which one is unknown")
    finally:
        note_runner("10.0.0.9:7400", present=False)
        note_runner("10.0.0.9:7401", present=False)
    one, two = (json.loads(line) for line in lines(stream))
    assert one["runner"] == "10.0.0.9:7400"
    assert "runner" not in two


def test_configuring_twice_installs_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    covey.configure_logging(stream=first)
    covey.configure_logging(stream=second)
    log.info("once")
    assert first.getvalue() == "" and len(lines(second)) == 1
    assert sum(getattr(h, "covey_handler", False)
               for h in logging.getLogger("covey").handlers) == 1


def test_a_root_handler_added_later_does_not_print_covey_lines_twice() -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    covey.configure_logging(stream=ours)
    logging.getLogger().addHandler(logging.StreamHandler(theirs))
    log.info("once only")
    assert len(lines(ours)) == 1 and theirs.getvalue() == ""


def test_settings_install_the_handler_unless_the_app_configured_logging(
        capsys: pytest.CaptureFixture[str]) -> None:
    bare_root()
    assert configure_from_options(LogOptions()) is None  # nothing asked: nothing done
    assert not [h for h in logging.getLogger("covey").handlers
                if getattr(h, "covey_handler", False)]

    app_stream = io.StringIO()
    app_handler = logging.StreamHandler(app_stream)
    logging.getLogger().addHandler(app_handler)
    assert configure_from_options(LogOptions(level="DEBUG", format="json")) is None
    assert logging.getLogger("covey").level == logging.DEBUG  # only the level
    log.debug("through the app's handler")
    assert app_stream.getvalue() == "through the app's handler\n"

    logging.getLogger().removeHandler(app_handler)
    handler = configure_from_options(LogOptions(format="json"))
    assert handler is not None
    log.info("through covey's handler")
    assert json.loads(capsys.readouterr().err)["message"] == "through covey's handler"


async def test_a_starting_cluster_applies_covey_log_settings(
        capsys: pytest.CaptureFixture[str]) -> None:
    bare_root()
    config = CoveyConfig.from_env({"COVEY_DATABASE_URL": "memory://", "COVEY_SHARDS": "4",
                                   "COVEY_LOG_LEVEL": "INFO", "COVEY_LOG_FORMAT": "json"})
    async with covey.Cluster(config) as cluster:
        address = str(cluster.address)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    joined = next(r for r in records if "joined" in r["message"])
    assert joined["logger"] == "covey.cluster" and joined["runner"] == address


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="COVEY_LOG_LEVEL"):
        CoveyConfig.from_env({"COVEY_LOG_LEVEL": "chatty"})
    with pytest.raises(ConfigError, match="COVEY_LOG_FORMAT"):
        CoveyConfig.from_env({"COVEY_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="unknown log level"):
        covey.configure_logging("LOUD")


UVICORN_APP = """
import covey
from starlette.applications import Starlette

cluster = covey.Cluster.from_env()
app = Starlette(lifespan=cluster.lifespan)
"""


@pytest.mark.acceptance  # starts real processes
def test_covey_logs_show_under_uvicorn_with_one_setting(tmp_path: Path) -> None:
    # the complaint: under uvicorn covey's INFO lines were invisible
    (tmp_path / "web.py").write_text(UVICORN_APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'covey.db'}",
                "COVEY_SHARDS": "4", "COVEY_LOG_LEVEL": "INFO"})
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web:app", "--port", "0"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Application startup complete" in line:
                break
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            seen.extend(server.stdout.readlines())
            server.stdout.close()
    output = "".join(seen)
    assert " INFO covey.cluster: runner 127.0.0.1:" in output, output
    assert " joined (machine id " in output and " INFO covey.cluster: runner " in output
