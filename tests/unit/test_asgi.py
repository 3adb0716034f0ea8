"""covey.asgi: covey errors as problem+json, ids as strings, probe routes, install()."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

import covey.asgi
from covey.asgi import STATUS, JsonId, json_safe, problem_for, status_of
from covey.core import ClusterError, CoveyConfig, Reason

# The documented answer to every reason (docs/web.md has the same table). A new
# Reason fails test_every_reason_has_a_documented_status until it is added here,
# to covey.asgi.STATUS and to the docs.
DOCUMENTED: dict[str, tuple[int, int | None]] = {
    "payload_invalid": (422, None), "payload_unknown_type": (422, None),
    "invalid_argument": (400, None), "frame_too_large": (413, None),
    "message_not_found": (404, None), "job_not_found": (404, None),
    "idempotency_conflict": (409, None), "invalid_transition": (409, None),
    "already_processed": (409, None), "job_dead": (409, None), "job_cancelled": (409, None),
    "storage_unavailable": (503, 2), "peer_unavailable": (503, 1), "not_owner": (503, 1),
    "mailbox_full": (503, 1), "shutting_down": (503, 1), "version_conflict": (503, 1),
    "fenced": (503, 1), "timeout": (504, 1), "remote_failure": (502, None),
    "config_invalid": (500, None), "storage_corrupt": (500, None),
    "shard_count_mismatch": (500, None), "migration_failed": (500, None),
    "auth_failed": (500, None), "unknown_entity_type": (500, None),
    "unknown_rpc": (500, None), "handler_failed": (500, None),
    "state_version_unknown": (500, None), "state_read_only": (500, None),
    "workflow_not_found": (404, None), "token_invalid": (403, None),
    "workflow_failed": (409, None), "workflow_cancelled": (409, None),
    "workflow_finished": (409, None), "nondeterminism": (409, None),
    "unknown_workflow": (500, None),
    "webhook_endpoint_not_found": (404, None), "webhook_delivery_not_found": (404, None),
    "webhook_signature_invalid": (401, None), "webhook_timestamp_invalid": (401, None),
    "webhook_target_refused": (400, None),
    "stream_forbidden": (403, None), "unauthenticated": (401, None), "forbidden": (403, None),
    "cursor_invalid": (400, None), "frame_invalid": (400, None), "rate_limited": (429, 1),
    "slow_consumer": (503, 1),
}
BIG_ID = 2**62 + 12345  # a snowflake-sized id: not exact in a JavaScript number


@dataclass
class FakeProbe:
    ok: bool
    body: dict[str, Any]


@dataclass
class FakeHealth:
    live_ok: bool = True
    ready_ok: bool = True
    calls: list[str] = field(default_factory=list)

    def live(self) -> FakeProbe:
        self.calls.append("live")
        return FakeProbe(self.live_ok, {"status": "pass" if self.live_ok else "fail"})

    def ready(self) -> FakeProbe:
        self.calls.append("ready")
        return FakeProbe(self.ready_ok, {"status": "pass" if self.ready_ok else "fail"})

    def report(self) -> FakeProbe:
        self.calls.append("report")
        return FakeProbe(self.ready_ok, {
            "status": "pass" if self.ready_ok else "fail", "serviceId": BIG_ID,
            "checks": {"postgres:responseTime": [{"status": "pass", "latencyMs": 1.5}]}})


def fake_cluster(health: FakeHealth | None = None) -> Any:
    return SimpleNamespace(config=CoveyConfig(), health=health or FakeHealth(),
                           snowflake=lambda: BIG_ID)


def app_raising(error: ClusterError, **install: Any) -> FastAPI:
    app = FastAPI()
    covey.asgi.install(app, fake_cluster(), **install)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


# ---- the error table ------------------------------------------------------


def test_every_reason_has_a_documented_status() -> None:
    assert {r.value for r in Reason} == set(DOCUMENTED), "document the new reason's status"
    assert set(STATUS) == set(Reason)
    for reason in Reason:
        answer = status_of(reason)
        assert (answer.status, answer.retry_after) == DOCUMENTED[reason.value], reason


def test_retryable_reasons_say_when_to_retry() -> None:
    for reason in Reason:
        error = ClusterError("x", reason=reason)
        if error.retryable:
            assert status_of(reason).status in (429, 503, 504), reason
            assert status_of(reason).retry_after is not None, reason


@pytest.mark.parametrize("reason", list(Reason), ids=[r.value for r in Reason])
async def test_an_error_is_answered_with_its_documented_problem(reason: Reason) -> None:
    app = app_raising(ClusterError("it went wrong", reason=reason, entity_id="e-1"))
    async with client(app) as http:
        response = await http.get("/boom", headers={"X-Request-ID": "req-42"})
    status, retry_after = DOCUMENTED[reason.value]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get("retry-after") == (None if retry_after is None
                                                   else str(retry_after))
    assert response.headers["x-request-id"] == "req-42"
    body = response.json()
    assert body["type"] == f"urn:covey:reason:{reason.value}"
    assert body["status"] == status and body["title"]
    assert body["reason"] == reason.value
    assert body["request_id"] == "req-42"
    if status in (500, 502):  # internals stay in the log by default
        assert "it went wrong" not in response.text and body["details"] == {}
    else:
        assert body["detail"] == body["message"] == "it went wrong"
        assert body["details"] == {"entity_id": "e-1"}


async def test_internal_errors_show_their_message_when_exposed() -> None:
    app = app_raising(ClusterError("handler raised KeyError: 'x'",
                                   reason=Reason.HANDLER_FAILED, error_type="KeyError"),
                      expose_internal=True)
    async with client(app) as http:
        body = (await http.get("/boom")).json()
    assert body["detail"] == "handler raised KeyError: 'x'"
    assert body["details"] == {"error_type": "KeyError"}


async def test_the_generated_request_id_is_a_string_in_the_body_and_the_header() -> None:
    async with client(app_raising(ClusterError("gone", reason=Reason.JOB_NOT_FOUND))) as http:
        response = await http.get("/boom")
    assert response.status_code == 404
    assert response.json()["request_id"] == str(BIG_ID) == response.headers["x-request-id"]


def test_details_with_big_ids_and_odd_values_still_encode() -> None:
    error = ClusterError("dead", reason=Reason.JOB_DEAD, job_id=BIG_ID, at=object(),
                         small=7)
    body = json.loads(problem_for(error, request_id="r").encode())
    assert body["details"]["job_id"] == str(BIG_ID)
    assert body["details"]["small"] == 7
    assert body["details"]["at"].startswith("<object object")


# ---- ids in JSON ------------------------------------------------------------


def test_json_safe_turns_only_unsafe_integers_into_strings() -> None:
    limit = covey.asgi.MAX_SAFE_INTEGER
    value = {"id": BIG_ID, "neg": -limit - 1, "ok": limit, "flag": True,
             "items": [(1, BIG_ID)], "name": "x"}
    assert json_safe(value) == {"id": str(BIG_ID), "neg": str(-limit - 1), "ok": limit,
                                "flag": True, "items": [[1, str(BIG_ID)]], "name": "x"}


class Job(BaseModel):
    job_id: JsonId


def test_json_id_is_an_int_in_python_and_a_string_in_json() -> None:
    job = Job(job_id=BIG_ID)
    assert job.job_id == BIG_ID
    assert json.loads(job.model_dump_json()) == {"job_id": str(BIG_ID)}
    assert Job.model_validate_json(f'{{"job_id": "{BIG_ID}"}}').job_id == BIG_ID
    assert Job.model_validate({"job_id": BIG_ID}).job_id == BIG_ID
    assert Job.model_json_schema()["properties"]["job_id"]["type"] == "string"
    with pytest.raises(ValueError, match="job_id"):
        Job.model_validate({"job_id": "12ab"})


async def test_a_fastapi_response_model_sends_the_id_as_a_string() -> None:
    app = FastAPI()
    covey.asgi.install(app, fake_cluster())

    @app.get("/jobs/{job_id}")
    async def show(job_id: JsonId) -> Job:
        return Job(job_id=job_id)

    async with client(app) as http:
        response = await http.get(f"/jobs/{BIG_ID}")
    assert response.status_code == 200
    assert response.text == f'{{"job_id":"{BIG_ID}"}}'


# ---- probes -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "ok_field", "call"), [
    ("/livez", "live_ok", "live"), ("/readyz", "ready_ok", "ready"),
    ("/health", "ready_ok", "report"),
])
async def test_probes_answer_from_cluster_health(path: str, ok_field: str, call: str) -> None:
    health = FakeHealth()
    app = FastAPI()
    covey.asgi.install(app, fake_cluster(health), require_tenant=True)
    async with client(app) as http:
        passing = await http.get(path)  # no X-Tenant-ID: probes never need one
        setattr(health, ok_field, False)
        failing = await http.get(path)
        head = await http.head(path)
        post = await http.post(path)
    assert passing.status_code == 200
    assert passing.headers["content-type"] == "application/health+json"
    assert passing.headers["cache-control"] == "no-store"
    assert failing.status_code == 503 and failing.json()["status"] == "fail"
    assert head.status_code == 503 and head.content == b""
    assert post.status_code == 405
    assert health.calls.count(call) == 3


async def test_the_health_report_carries_ids_as_strings() -> None:
    app = FastAPI()
    covey.asgi.install(app, fake_cluster())
    async with client(app) as http:
        body = (await http.get("/health")).json()
    assert body["serviceId"] == str(BIG_ID)
    assert body["checks"]["postgres:responseTime"][0]["latencyMs"] == 1.5


async def test_a_probe_whose_health_raises_answers_503_not_500() -> None:
    health = FakeHealth()
    health.ready = lambda: 1 / 0  # type: ignore[method-assign, assignment, return-value]
    app = FastAPI()
    covey.asgi.install(app, fake_cluster(health))
    async with client(app) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "ZeroDivisionError" in response.json()["output"]


async def test_metrics_route_serves_prometheus_without_a_tenant() -> None:
    app = FastAPI()
    covey.asgi.install(app, fake_cluster(), require_tenant=True)
    async with client(app) as http:
        response = await http.get("/metrics")
        other = await http.get("/anything")
    assert response.status_code == 200
    assert "covey_shards_owned" in response.text
    assert other.status_code == 400 and other.json()["error"] == "tenant_required"


# ---- install's own errors -----------------------------------------------------


def test_install_refuses_what_is_not_a_starlette_app() -> None:
    async def asgi(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ClusterError) as caught:
        covey.asgi.install(asgi, fake_cluster())
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details == {"field": "app"}


def test_install_refuses_an_app_it_was_installed_on() -> None:
    app = FastAPI()
    covey.asgi.install(app, fake_cluster())
    with pytest.raises(ClusterError) as caught:
        covey.asgi.install(app, fake_cluster())
    assert caught.value.details == {"field": "app"}


@pytest.mark.parametrize("delay", [-1.0, float("nan")])
def test_install_refuses_a_bad_drain_delay(delay: float) -> None:
    with pytest.raises(ClusterError) as caught:
        covey.asgi.install(FastAPI(), fake_cluster(), drain_delay=delay)
    assert caught.value.details == {"field": "drain_delay"}


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_drain_delay_setting_is_a_config_error(value: str) -> None:
    with pytest.raises(covey.ConfigError) as caught:
        CoveyConfig.from_env({"COVEY_DRAIN_DELAY": value})
    assert "COVEY_DRAIN_DELAY" in str(caught.value)


def test_the_drain_delay_setting_defaults_to_five_seconds() -> None:
    assert CoveyConfig.from_env({}).drain_delay == 5.0
    assert CoveyConfig.from_env({"COVEY_DRAIN_DELAY": "2.5"}).drain_delay == 2.5


WITHOUT_STARLETTE = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("starlette", "fastapi"):
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Block())
import covey
import covey.asgi
from covey.core import ClusterError, Reason

problem = covey.asgi.problem_for(ClusterError("x", reason=Reason.TIMEOUT), request_id="1")
assert problem.status == 504
try:
    covey.asgi.install(object(), None)
except ImportError as exc:
    print(exc)
"""


def test_covey_and_its_asgi_parts_import_without_starlette() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_STARLETTE], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "needs Starlette" in result.stdout
