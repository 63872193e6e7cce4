"""Prometheus alert rules (deploy/prometheus/rules/): checked by `promtool check rules`, proven by
the unit tests in deploy/prometheus/tests/ (`promtool test rules`), and held to the house rules:
every alert has a `for:`, a severity and a summary and description."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, load_yaml_documents, require_tool
from tests.deploy.promql import dashboards

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "portal-rules.test.yml"
#: The alerts the tracker asks for, with the severity each must carry.
REQUIRED_ALERTS = {
    "PortalLedgerImbalance": "critical",
    "PortalLedgerViolations": "critical",
    "PortalLedgerCheckStale": "warning",
    "PortalHighErrorRate": "critical",
    "PortalHighLatency": "warning",
    "PortalJobBacklog": "warning",
    "PortalDeadJobs": "warning",
    "PortalWorkerDown": "critical",
    "PortalWorkerMissing": "critical",
    "PortalWebDown": "critical",
}
#: Alerts the promtool unit tests must show both firing and quiet.
MUST_BE_UNIT_TESTED = set(REQUIRED_ALERTS) | {
    "PortalWebMissing",
    "PortalJobQueueLarge",
    "PortalWorkerStalled",
    "PortalPeriodicTaskFailing",
}


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files
    return files


def alerting_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for document in load_yaml_documents(path)
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "apt-get install -y prometheus")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_promtool_check_rules_accepts_every_rule_file() -> None:
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def copy_with(tmp_path: Path, path: Path, old: str, new: str) -> None:
    """The prometheus folder copied to tmp_path with ``old`` replaced by ``new`` in ``path``."""
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    target = tmp_path / "prometheus" / path.relative_to(PROMETHEUS_DIR)
    text = target.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}: update this control"
    target.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # An error-rate threshold ten times too high: the 9% error test no longer fires.
        ("      ) > 0.05\n", "      ) > 0.5\n"),
        # Worker down that ignores the worker job: the worker test no longer fires.
        ('up{job="portal-worker"} == 0', 'up{job="portal-workers"} == 0'),
        # An imbalance alert blind to negative sums.
        ("abs(portal_ledger_imbalance_minor_units)", "portal_ledger_imbalance_minor_units"),
    ],
    ids=["error-rate-threshold", "worker-job", "imbalance-sign"],
)
def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """Control: the unit tests fail when a rule they cover is broken."""
    path = next(p for p in rule_files() if old in p.read_text(encoding="utf-8"))
    copy_with(tmp_path, path, old, new)
    result = promtool("test", "rules", str(tmp_path / "prometheus" / "tests" / RULE_TESTS.name))
    assert result.returncode != 0, result.stdout


def test_promtool_check_rules_rejects_a_broken_expression(tmp_path: Path) -> None:
    path = RULES_DIR / "portal-alerts.yml"
    copy_with(tmp_path, path, "max(portal_job_oldest_due_seconds) > 300", "max(portal_job_ > 300")
    result = promtool("check", "rules", str(tmp_path / "prometheus" / "rules" / path.name))
    assert result.returncode != 0


def test_the_required_alerts_exist_with_their_severity() -> None:
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in alerting_rules()}
    for alert, severity in REQUIRED_ALERTS.items():
        assert severities.get(alert) == severity, alert


def test_every_alert_waits_and_explains_itself() -> None:
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name} has no for:"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations.get("summary"), f"{name} has no summary"
        assert len(annotations.get("description", "")) > 40, f"{name} has no description"
        dashboard = annotations.get("dashboard")
        if dashboard:  # links a dashboard that is really provisioned
            uids = {board["uid"] for board in dashboards().values()}
            assert dashboard.removeprefix("/d/") in uids, f"{name} links unknown {dashboard}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    (tests,) = load_yaml_documents(RULE_TESTS)
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    defined = {rule["alert"] for rule in alerting_rules()}
    assert defined >= MUST_BE_UNIT_TESTED
    assert defined - firing == set(), "alerts never shown firing"
    assert defined - quiet == set(), "alerts never shown quiet"
    assert {str(RULES_DIR / p.name) for p in rule_files()} == {
        str((RULE_TESTS.parent / f).resolve()) for f in tests["rule_files"]
    }, "the unit tests must load every rule file"
