"""docker-compose.yml: validated by `docker-compose config` and by structural checks of our own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.conftest import ROOT, load_yaml_documents, require_tool

COMPOSE = ROOT / "docker-compose.yml"
REQUIRED_ENV = (
    "PORTAL_ENV",
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "PORTAL_VAULT_KEYS",
    "PORTAL_FINGERPRINT_KEY",
    "PORTAL_CVV_KEY",
    "PORTAL_JWT_KEY",
)
STACK = {
    "portal",
    "worker",
    "migrate",
    "postgres",
    "redis",
    "prometheus",
    "grafana",
    "otel-collector",
    "jaeger",
    "loki",
    "promtail",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (document,) = load_yaml_documents(COMPOSE)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def run_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("docker-compose", "apt-get install -y docker-compose")
    return subprocess.run(
        [tool, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )


def test_docker_compose_config_accepts_the_file() -> None:
    result = run_compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_copy(tmp_path: Path) -> None:
    """Control: the validator really fails on a dependency on a service that does not exist."""
    broken = COMPOSE.read_text(encoding="utf-8").replace(
        "      - portal\n", "      - no-such-service\n", 1
    )
    assert broken != COMPOSE.read_text(encoding="utf-8")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "docker-compose.yml").write_text(broken, encoding="utf-8")
    result = run_compose_config(tmp_path / "docker-compose.yml")
    assert result.returncode != 0


def test_the_whole_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= STACK, STACK - set(services)


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value = service.get("depends_on", {})
    if isinstance(value, list):
        return {name: {} for name in value}
    return value


def test_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name


def test_host_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            host = ":".join(parts[:-1]) if len(parts) > 1 else parts[0]
            host_port = host.split(":")[-1]
            assert host_port not in seen, f"{name} and {seen[host_port]} both publish {host_port}"
            seen[host_port] = name


def test_mounted_files_exist_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith("/"):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_migrations_run_once_before_web_and_worker(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["command"] == [
        "sh", "-c", "portal db upgrade && portal runtime-role"
    ]  # fmt: skip
    for name in ("portal", "worker"):
        command = " ".join(services[name]["command"])
        assert "upgrade" not in command
        assert depends_on(services[name])["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["portal"]["command"] == [
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "portal:create_app()",
    ]
    assert services["worker"]["command"] == ["portal", "worker"]


def test_postgres_is_15_or_newer(services: dict[str, dict[str, Any]]) -> None:
    match = re.match(r"postgres:(\d+)", services["postgres"]["image"])
    assert match and int(match.group(1)) >= 15


def test_portal_services_get_every_required_setting_with_dev_placeholders(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("portal", "worker", "migrate"):
        env = services[name]["environment"]
        for key in REQUIRED_ENV:
            assert env.get(key), f"{name} lacks {key}"
        assert env["PORTAL_ENV"] == "production"
        for key in ("SECRET_KEY", "PORTAL_FINGERPRINT_KEY", "PORTAL_CVV_KEY", "PORTAL_JWT_KEY"):
            assert "dev-only" in env[key], f"{key} is not an obvious development placeholder"
        assert "@postgres:" in env["DATABASE_URL"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "//redis:" in env["REDIS_URL"]
    assert services["portal"]["environment"]["PORTAL_BIND"] == "0.0.0.0:8000"
    assert "8000:8000" in services["portal"]["ports"]


def test_migrations_run_as_the_owner_and_the_app_as_another_role(
    services: dict[str, dict[str, Any]],
) -> None:
    """Two database roles (issue 11 A9): only ``migrate`` knows the schema owner (the image's
    superuser); web and worker connect as the runtime role ``migrate`` sets up."""
    postgres = services["postgres"]["environment"]
    owner = urlsplit(services["migrate"]["environment"]["MIGRATION_DATABASE_URL"])
    assert (owner.username, owner.password) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]
    )  # fmt: skip
    assert (owner.hostname, owner.path) == ("postgres", "/" + postgres["POSTGRES_DB"])
    for name in ("portal", "worker", "migrate"):
        app = urlsplit(services[name]["environment"]["DATABASE_URL"])
        assert app.username and app.username != owner.username, name
        assert app.password and app.password != owner.password, name
        assert "dev-only" in app.password
        assert (app.hostname, app.path) == (owner.hostname, owner.path)
    for name in ("portal", "worker"):
        assert "MIGRATION_DATABASE_URL" not in services[name]["environment"], name
    steps = services["migrate"]["command"][2].split(" && ")
    assert steps == ["portal db upgrade", "portal runtime-role"]


def test_header_says_the_secrets_are_development_only() -> None:
    header = COMPOSE.read_text(encoding="utf-8").split("services:")[0]
    assert "DEVELOPMENT ONLY" in header


def test_worker_healthcheck_probes_its_own_healthz(services: dict[str, dict[str, Any]]) -> None:
    """The worker's healthcheck asks its /healthz (on PORTAL_WORKER_HTTP_PORT) with what the
    image has (python's urllib; the slim image has no curl)."""
    worker = services["worker"]
    port = worker["environment"]["PORTAL_WORKER_HTTP_PORT"]
    check = worker["healthcheck"]
    assert not check.get("disable")
    assert check["test"][:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/healthz" in check["test"][3]
    compile(check["test"][3], "healthcheck", "exec")  # valid Python
    assert port in [str(p) for p in worker["expose"]]
