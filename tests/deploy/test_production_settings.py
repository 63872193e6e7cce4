"""The shipped production configurations set every setting production requires (the list in
``portal.config``, which includes a mail server: without one, emails with reset links would
only reach the console and so the shipped logs), and compose's set loads as it stands."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from portal.config import REQUIRED_IN_PRODUCTION, SMTP_SCHEMES, load_config
from tests.deploy.conftest import ROOT, load_yaml_documents


def _compose() -> dict[str, Any]:
    (document,) = load_yaml_documents(ROOT / "docker-compose.yml")
    return document  # type: ignore[no-any-return]


def test_compose_services_load_as_production_with_a_mail_server() -> None:
    services = _compose()["services"]
    for name in ("portal", "worker", "migrate"):
        env = {key: str(value) for key, value in services[name]["environment"].items()}
        missing = [key for key in REQUIRED_IN_PRODUCTION if not env.get(key)]
        assert not missing, f"{name} lacks {missing}"
        config = load_config(env)  # raises ConfigError if anything is missing or malformed
        assert config["PORTAL_ENV"] == "production"
        smtp = urlsplit(config["SMTP_URL"])
        assert smtp.scheme in SMTP_SCHEMES
        # The mail server it names is a service of the stack.
        assert smtp.hostname in services, f"{name} sends mail to unknown host {smtp.hostname}"
    assert "mailpit" in services["portal"]["depends_on"]


def test_kubernetes_sets_every_production_setting_and_smtp_as_a_secret() -> None:
    docs = [doc for path in sorted((ROOT / "k8s").glob("*.yaml"))
            for doc in load_yaml_documents(path)]  # fmt: skip
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "portal-secrets"
    ]
    env = {**config["data"], **secret["stringData"]}
    missing = [key for key in REQUIRED_IN_PRODUCTION if not env.get(key)]
    assert not missing, f"k8s sets no {missing}"
    assert env["PORTAL_ENV"] == "production"
    # It holds credentials: in the Secret, as a placeholder to fill in.
    smtp = secret["stringData"]["PORTAL_SMTP_URL"]
    assert "PORTAL_SMTP_URL" not in config["data"]
    assert "REPLACE_ME" in smtp
    assert urlsplit(smtp).scheme in SMTP_SCHEMES
    # Every pod that loads the configuration gets both.
    pods = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        for container in spec["containers"]:
            sources = container.get("envFrom", [])
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources, pod["metadata"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources
