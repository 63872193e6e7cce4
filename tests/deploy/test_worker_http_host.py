"""The worker's health and metrics port listens on loopback unless told otherwise (issue 11,
A10): outside a container nothing else needs it. The container configurations, whose probes and
scrapes come from outside, open it with ``PORTAL_WORKER_HTTP_HOST=0.0.0.0`` explicitly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
import requests

from portal.config import load_config
from portal.worker import Worker, serve_http
from tests.deploy import test_compose as compose_tests
from tests.deploy import test_dockerfile as dockerfile_tests
from tests.deploy.test_k8s import containers, named

compose, services = compose_tests.compose, compose_tests.services
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (what the containers must set)
stages, runtime = dockerfile_tests.stages, dockerfile_tests.runtime


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback, if it has one (a UDP "connect" sends
    nothing; it only picks the interface a packet would leave by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: never routed anywhere real
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == ALL_INTERFACES else address


@pytest.fixture
def served() -> Iterator[ThreadingHTTPServer]:
    host = load_config({"PORTAL_ENV": "development"})["WORKER_HTTP_HOST"]
    server = serve_http(Worker(lambda: None), 0, host=host)  # type: ignore[arg-type,return-value]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_is_loopback_and_the_variable_wins() -> None:
    assert load_config({"PORTAL_ENV": "development"})["WORKER_HTTP_HOST"] == "127.0.0.1"
    assert load_config({"PORTAL_ENV": "test"})["WORKER_HTTP_HOST"] == "127.0.0.1"
    opened = load_config({"PORTAL_ENV": "development", "PORTAL_WORKER_HTTP_HOST": ALL_INTERFACES})
    assert opened["WORKER_HTTP_HOST"] == ALL_INTERFACES


def test_by_default_the_port_answers_on_loopback_only(served: ThreadingHTTPServer) -> None:
    host, port = served.server_address[:2]
    assert host == "127.0.0.1"
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    outside = non_loopback_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback to try from")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{outside}:{port}/healthz", timeout=5)


def test_the_image_opens_it(runtime: list[Any]) -> None:
    env = " ".join(dockerfile_tests.values(runtime, "ENV"))
    assert f"PORTAL_WORKER_HTTP_HOST={ALL_INTERFACES}" in env.split()


def test_compose_opens_it_for_the_worker(services: dict[str, dict[str, Any]]) -> None:
    environment = services["worker"]["environment"]
    assert environment["PORTAL_WORKER_HTTP_HOST"] == ALL_INTERFACES
    assert environment["PORTAL_WORKER_HTTP_PORT"] == "9101"


def test_kubernetes_opens_it_for_the_worker() -> None:
    (worker,) = containers(named("Deployment", "portal-worker"))
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["PORTAL_WORKER_HTTP_HOST"] == ALL_INTERFACES
    assert env["PORTAL_WORKER_HTTP_PORT"] == "9101"
