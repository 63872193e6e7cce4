"""Checks of the deployment files: static ones (no Docker engine, no database), and the
observability tests that scrape a live portal (test_metric_names.py, test_prometheus_live.py:
these need the test database like the rest of the suite).

External tools: ``docker-compose``, ``promtool`` and ``prometheus`` (Debian's ``docker-compose``
and ``prometheus`` packages) and ``kubernetes-validate`` (PyPI). Outside CI a missing tool skips
its test with the reason; under ``CI=true`` it fails, so CI cannot pass without really validating.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str, install_hint: str) -> str:
    """Path of executable ``name``; skip locally, fail under CI=true, when it is missing."""
    path = shutil.which(name)
    if path is None:
        venv_bin = Path(sys.executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        message = f"{name} is not installed ({install_hint})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must install it", pytrace=False)
        pytest.skip(message)
    return path


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
