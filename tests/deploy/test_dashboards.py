"""Grafana dashboards (deploy/grafana/dashboards/): valid dashboard JSON that Grafana's file
provider loads from the directory docker-compose mounts, each panel placed on the grid and
querying the provisioned Prometheus data source. That every metric they query is exported is
tested by test_metric_names.py, that every query parses by test_prometheus_live.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, load_yaml_documents
from tests.deploy.promql import DASHBOARDS, dashboards, metric_names, panels

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
#: What each board must show: metric names (and label selections) its queries use.
REQUIRED = {
    "portal-http.json": [
        "portal_http_request_duration_seconds_count",
        "portal_http_request_duration_seconds_bucket",
        'status="429"',
        'status=~"4.."',
        'status=~"5.."',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "portal_sign_ins_total",
        "portal_token_reuse_detections_total",
    ],
    "portal-money.json": [
        "portal_money_moved_minor_units_total",
        "portal_money_movements_total",
        "portal_refusals_total",
        "portal_idempotent_replays_total",
        "portal_holds_pending",
        "portal_ledger_imbalance_minor_units",
        "portal_ledger_violations",
        "portal_ledger_last_check_timestamp_seconds",
    ],
    "portal-worker.json": [
        "portal_worker_jobs_total",
        "portal_worker_job_duration_seconds_bucket",
        "portal_jobs",
        "portal_job_oldest_due_seconds",
        'up{job="portal-worker"}',
        "portal_worker_last_loop_timestamp_seconds",
        "portal_worker_periodic_failures_total",
    ],
    "portal-data.json": [
        "portal_cache_requests_total",
        'result="hit"',
        'result=~"hit|miss"',
        'result="error"',
        'url_rule="/healthz"',
    ],
}


def prometheus_uid() -> str:
    (config,) = load_yaml_documents(PROVISIONING / "datasources" / "datasources.yml")
    (source,) = [ds for ds in config["datasources"] if ds["type"] == "prometheus"]
    uid: str = source["uid"]
    return uid


def problems(board: dict[str, Any], uid: str) -> list[str]:
    """What is wrong with one dashboard (empty when it is fine)."""
    found = []
    for key in ("uid", "title", "panels"):
        if not board.get(key):
            found.append(f"no {key}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 36:
        found.append("schemaVersion missing or older than Grafana 9")
    everything = list(panels(board))
    ids = [panel.get("id") for panel in everything]
    if len(ids) != len(set(ids)) or not all(isinstance(i, int) for i in ids):
        found.append(f"panel ids not unique integers: {ids}")
    titles = [panel.get("title") for panel in everything]
    repeated = sorted({str(t) for t in titles if titles.count(t) > 1})
    if repeated or not all(titles):
        found.append(f"panel titles missing or repeated: {repeated}")
    cells: dict[tuple[int, int], str] = {}
    for panel in everything:
        title, grid = panel.get("title"), panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            found.append(f"{title}: gridPos needs integer h, w, x, y")
            continue
        if grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24 or grid["h"] < 1:
            found.append(f"{title}: off the 24-column grid")
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    found.append(f"{title} overlaps {cells[(x, y)]}")
                    break
                cells[(x, y)] = title
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != {"type": "prometheus", "uid": uid}:
            found.append(f"{title}: not the provisioned Prometheus data source")
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{title}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or not all(refs):
            found.append(f"{title}: refIds missing or repeated")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                found.append(f"{title}: a target without expr")
            elif not metric_names(target["expr"]):
                found.append(f"{title}: {target['expr']!r} selects no metric")
            if target.get("datasource", {"uid": uid}).get("uid") != uid:
                found.append(f"{title}: target on another data source")
    return sorted(set(found))


def test_there_are_four_dashboards_each_valid() -> None:
    boards = dashboards()
    assert set(boards) == set(REQUIRED)
    uid = prometheus_uid()
    assert {name: problems(board, uid) for name, board in boards.items()} == dict.fromkeys(
        boards, []
    )
    uids = [board["uid"] for board in boards.values()]
    titles = [board["title"] for board in boards.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_dashboard_shows_what_it_is_for(name: str) -> None:
    text = json.dumps([t["expr"] for p in panels(dashboards()[name]) for t in p.get("targets", [])])
    text = text.replace('\\"', '"')
    missing = [needle for needle in REQUIRED[name] if needle not in text]
    assert missing == []


def test_files_are_json_with_a_final_newline() -> None:
    for path in sorted(DASHBOARDS.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        assert text.endswith("}\n"), path.name


@pytest.mark.parametrize(
    "breakage",
    ["repeat an id", "repeat a title", "overlap", "no expr", "other data source", "no gridPos"],
)
def test_the_checks_catch_a_broken_dashboard(breakage: str) -> None:
    """Control: each kind of mistake is reported."""
    board = copy.deepcopy(dashboards()["portal-http.json"])
    uid = prometheus_uid()
    assert problems(board, uid) == []
    first, second = [p for p in board["panels"] if p["type"] != "row"][:2]
    if breakage == "repeat an id":
        second["id"] = first["id"]
    elif breakage == "repeat a title":
        second["title"] = first["title"]
    elif breakage == "overlap":
        second["gridPos"] = dict(first["gridPos"])
    elif breakage == "no expr":
        second["targets"][0]["expr"] = " "
    elif breakage == "other data source":
        second["datasource"] = {"type": "prometheus", "uid": "somewhere-else"}
    else:
        del second["gridPos"]
    assert problems(board, uid) != []


def test_grafana_provisions_the_directory_compose_mounts() -> None:
    (provisioning,) = load_yaml_documents(PROVISIONING / "dashboards" / "dashboards.yml")
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    (compose,) = load_yaml_documents(ROOT / "docker-compose.yml")
    mounts = dict(
        str(volume).split(":")[:2] for volume in compose["services"]["grafana"]["volumes"]
    )
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(ROOT / "deploy" / "grafana" / "dashboards").is_dir()
