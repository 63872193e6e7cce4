"""k8s/: every manifest validates against the Kubernetes schemas, plus cross-reference checks."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, load_yaml_documents

K8S = ROOT / "k8s"
REQUIRED_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Deployment",
    "Service",
    "Ingress",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Job",
}
REQUIRED_SECRETS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "PORTAL_VAULT_KEYS",
    "PORTAL_FINGERPRINT_KEY",
    "PORTAL_CVV_KEY",
    "PORTAL_JWT_KEY",
)
Resource = dict[str, Any]


def manifests() -> list[tuple[Path, Resource]]:
    found = [
        (path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml_documents(path)
    ]
    assert found
    return found


def by_kind(kind: str) -> list[Resource]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def named(kind: str, name: str) -> Resource:
    (resource,) = [doc for doc in by_kind(kind) if doc["metadata"]["name"] == name]
    return resource


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:
        message = "kubernetes-validate is not installed (pip install kubernetes-validate)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must install it", pytrace=False)
        pytest.skip(message)
    return kv


@pytest.mark.parametrize(
    "resource",
    [doc for _, doc in manifests()],
    ids=[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in manifests()],
)
def test_manifest_matches_the_kubernetes_schema(resource: Resource) -> None:
    kv = kubernetes_validate()
    kv.validate(resource, kv.latest_version(), strict=True)


def test_schema_validation_rejects_a_broken_deployment() -> None:
    kv = kubernetes_validate()
    broken = copy.deepcopy(named("Deployment", "portal-web"))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = "lots"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)
    unknown_field = copy.deepcopy(named("Deployment", "portal-web"))
    unknown_field["spec"]["replicass"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(unknown_field, kv.latest_version(), strict=True)


def test_every_required_kind_is_present_in_the_namespace() -> None:
    docs = [doc for _, doc in manifests()]
    assert {doc["kind"] for doc in docs} >= REQUIRED_KINDS
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "portal", doc["metadata"]["name"]


def containers(resource: Resource) -> list[Resource]:
    return resource["spec"]["template"]["spec"]["containers"]


def test_pods_are_non_root_with_requests_and_limits() -> None:
    for resource in [*by_kind("Deployment"), *by_kind("Job")]:
        pod = resource["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(resource):
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][section])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            # Only the migration Job sees the schema owner's credentials.
            extra = {"portal-migration-secrets"} if resource["kind"] == "Job" else set()
            assert refs == {"portal-config", "portal-secrets"} | extra


def test_web_probes_healthz_and_runs_gunicorn_without_migrations() -> None:
    (web,) = containers(named("Deployment", "portal-web"))
    for probe in ("readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"]["path"] == "/healthz"
        assert web[probe]["httpGet"]["port"] == web["ports"][0]["name"]
    assert web["ports"][0]["containerPort"] == 8000
    assert web["command"] == ["gunicorn", "-c", "gunicorn.conf.py", "portal:create_app()"]
    (worker,) = containers(named("Deployment", "portal-worker"))
    assert worker["command"] == ["portal", "worker"]
    assert "readinessProbe" in worker and "livenessProbe" in worker
    (migrate,) = containers(named("Job", "portal-migrate"))
    assert migrate["command"] == ["sh", "-c", "portal db upgrade && portal runtime-role"]
    assert named("Job", "portal-migrate")["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_selectors_match_their_pods() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()

    def selects_a_deployment(selector: dict[str, str]) -> bool:
        return any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        )

    for service in by_kind("Service"):
        assert selects_a_deployment(service["spec"]["selector"])
    for pdb in by_kind("PodDisruptionBudget"):
        assert selects_a_deployment(pdb["spec"]["selector"]["matchLabels"])
    for hpa in by_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, one pod may always be evicted
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for ingress in by_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports


def test_secret_template_has_every_required_key_and_no_real_value() -> None:
    data = named("Secret", "portal-secrets")["stringData"]
    assert set(REQUIRED_SECRETS) <= set(data)
    for key in REQUIRED_SECRETS:
        assert "REPLACE_ME" in data[key], key
    (config,) = by_kind("ConfigMap")
    assert config["data"]["PORTAL_ENV"] == "production"
    assert config["data"]["PORTAL_BIND"] == "0.0.0.0:8000"
    assert not set(REQUIRED_SECRETS) & set(config["data"]), "secrets belong in the Secret"


def test_migrations_run_as_the_owner_and_the_pods_as_the_runtime_role() -> None:
    """Two database roles (issue 11 A9): the owner's URL is in a Secret of its own that only the
    migration Job mounts; web and worker connect as another role, which the Job sets up."""
    from urllib.parse import urlsplit

    (secret,) = [s for s in by_kind("Secret") if s["metadata"]["name"] != "portal-secrets"]
    assert secret["metadata"]["name"] == "portal-migration-secrets"
    assert set(secret["stringData"]) == {"MIGRATION_DATABASE_URL"}
    owner = urlsplit(secret["stringData"]["MIGRATION_DATABASE_URL"])
    app = urlsplit(named("Secret", "portal-secrets")["stringData"]["DATABASE_URL"])
    assert owner.password == app.password == "REPLACE_ME"
    assert owner.username and app.username and owner.username != app.username
    assert (owner.hostname, owner.path) == (app.hostname, app.path)
    assert "MIGRATION_DATABASE_URL" not in named("Secret", "portal-secrets")["stringData"]
    for name in ("portal-web", "portal-worker"):
        for container in containers(named("Deployment", name)):
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert "portal-migration-secrets" not in refs, name
            assert "MIGRATION_DATABASE_URL" not in str(container.get("env", "")), name
    (migrate,) = containers(named("Job", "portal-migrate"))
    assert migrate["command"][2].split(" && ") == ["portal db upgrade", "portal runtime-role"]


def test_worker_serves_healthz_for_its_probes_and_metrics_for_prometheus() -> None:
    deployment = named("Deployment", "portal-worker")
    (worker,) = containers(deployment)
    (port,) = worker["ports"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["PORTAL_WORKER_HTTP_PORT"] == str(port["containerPort"]) == "9101"
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # Liveness must outlast a job holding the loop for its whole lease (60 s by default).
    liveness = worker["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    service = named("Service", "portal-worker")
    assert service["spec"]["clusterIP"] == "None"  # one endpoint per worker pod
    assert service["spec"]["publishNotReadyAddresses"] is True  # a stalled worker is scraped
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
