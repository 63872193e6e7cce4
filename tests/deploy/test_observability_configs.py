"""Prometheus (checked by promtool), Grafana provisioning, the OTel Collector, Loki and Promtail."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, load_yaml_documents, require_tool

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"


def yaml_files() -> list[Path]:
    files = [
        ROOT / "docker-compose.yml",
        *sorted(DEPLOY.rglob("*.yml")),
        *sorted(DEPLOY.rglob("*.yaml")),
        *sorted((ROOT / "k8s").glob("*.yaml")),
    ]
    assert len(files) > 5
    return files


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents, f"{path} is empty"
    assert all(isinstance(document, dict) for document in documents)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "apt-get install -y prometheus")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_config_and_its_rules() -> None:
    result = promtool("check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout  # the rules folder is really loaded


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(
        PROMETHEUS.read_text(encoding="utf-8").replace(
            "scrape_interval: 15s", "scrape_interval: x"
        ),
        encoding="utf-8",
    )
    assert promtool("check", "config", str(broken)).returncode != 0


def test_prometheus_scrapes_the_portal_web_service() -> None:
    (config,) = load_yaml_documents(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["portal"]["static_configs"] for t in sc["targets"]]
    assert targets == ["portal:8000"]
    assert jobs["portal"].get("metrics_path", "/metrics") == "/metrics"
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    assert compose["services"]["portal"]["environment"]["PORTAL_BIND"].endswith(":8000")


def test_prometheus_scrapes_the_worker_on_its_http_port() -> None:
    (config,) = load_yaml_documents(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["portal-worker"]
    targets = [t for sc in worker["static_configs"] for t in sc["targets"]]
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    service = compose["services"]["worker"]
    port = service["environment"]["PORTAL_WORKER_HTTP_PORT"]
    assert targets == [f"worker:{port}"]
    assert port in [str(p) for p in service["expose"]]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    assert "worker" in compose["services"]["prometheus"]["depends_on"]


def test_scrapes_send_the_metrics_token_from_a_mounted_file() -> None:
    """Both portal jobs send the bearer token; the file Prometheus reads holds the same value as
    the compose stack's PORTAL_METRICS_TOKEN and is mounted where the config expects it."""
    (config,) = load_yaml_documents(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    token = compose["services"]["portal"]["environment"]["PORTAL_METRICS_TOKEN"]
    assert compose["services"]["worker"]["environment"]["PORTAL_METRICS_TOKEN"] == token
    mounts = {
        str(v).split(":")[1]: str(v).split(":")[0]
        for v in compose["services"]["prometheus"]["volumes"]
    }
    config_dir = PurePosixPath(
        next(
            inside
            for inside, host in mounts.items()
            if host == "./deploy/prometheus/prometheus.yml"
        )
    ).parent
    for name in ("portal", "portal-worker"):
        authorization = jobs[name]["authorization"]
        assert authorization.get("type", "Bearer") == "Bearer"
        assert "credentials" not in authorization, "the token belongs in a file, not the config"
        relative = authorization["credentials_file"]
        assert (PROMETHEUS.parent / relative).read_text(encoding="utf-8").strip() == token
        in_container = str(config_dir / relative)
        assert mounts.get(in_container) == f"./deploy/prometheus/{relative}", in_container
        assert "dev-only" in token


def test_grafana_data_sources_point_at_compose_services() -> None:
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    services = compose["services"]
    (provisioning,) = load_yaml_documents(
        DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml"
    )
    kinds: dict[str, Any] = {ds["type"]: ds for ds in provisioning["datasources"]}
    assert {"prometheus", "loki", "jaeger"} <= set(kinds)
    for ds in kinds.values():
        host = ds["url"].split("//")[1].split(":")[0]
        assert host in services, f"data source {ds['name']} points at unknown host {host}"
    assert sum(1 for ds in provisioning["datasources"] if ds.get("isDefault")) == 1


def test_otel_collector_sends_traces_to_jaeger() -> None:
    (config,) = load_yaml_documents(DEPLOY / "otel-collector" / "config.yaml")
    pipeline = config["service"]["pipelines"]["traces"]
    for receiver in pipeline["receivers"]:
        assert receiver in config["receivers"]
    for processor in pipeline["processors"]:
        assert processor in config["processors"]
    for exporter in pipeline["exporters"]:
        assert exporter in config["exporters"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    endpoint = compose["services"]["portal"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_promtail_pushes_to_loki() -> None:
    (config,) = load_yaml_documents(DEPLOY / "promtail" / "config.yaml")
    assert config["clients"][0]["url"] == "http://loki:3100/loki/api/v1/push"
    (loki,) = load_yaml_documents(DEPLOY / "loki" / "config.yaml")
    assert loki["server"]["http_listen_port"] == 3100
