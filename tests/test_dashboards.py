"""The Grafana dashboards (deploy/grafana/dashboards) and their provisioning: each is a dashboard Grafana loads (a
unique uid, panels on its 24-column grid, every query on the provisioned Prometheus datasource) and every query
parses as PromQL. That each names only series the services export, and that Prometheus evaluates each, is checked
after a real flow (tests/e2e/test_observability.py)."""

from __future__ import annotations

from pathlib import Path

import promql_parser
import pytest
import yaml

from tests.dashboards import DASHBOARDS, dashboard_queries, dashboards, metric_names, panels

ROOT = Path(__file__).resolve().parents[1]


def test_the_flow_pipes_and_kpi_dashboards_are_there_each_with_its_own_uid():
    found = dashboards()
    assert set(found) == {"oms-flow.json", "oms-pipes.json", "oms-kpis.json"}
    assert {d["uid"] for d in found.values()} == {"oms-flow", "oms-pipes", "oms-kpis"}
    for name, dashboard in found.items():
        assert dashboard["title"].startswith("OMS"), name
        assert dashboard["schemaVersion"] >= 36, name


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_every_panel_sits_on_the_grid_and_queries_the_provisioned_prometheus(name):
    dashboard = dashboards()[name]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus" and target["refId"] and target["expr"], panel["title"]


def test_every_query_parses_as_promql_and_selects_oms_series():
    queries = dashboard_queries()
    assert len(queries) >= 20
    for dashboard, title, expr in queries:
        try:
            promql_parser.parse(expr)
        except Exception as error:  # the parser's own error type is not exported
            pytest.fail(f"{dashboard} / {title}: {expr}: {error}")
        names = metric_names(expr)
        assert names, f"{dashboard} / {title} selects no series"
        assert all(n.startswith(("oms_", "messaging_", "http_", "db_")) or n == "up" for n in names), names


def test_grafana_is_provisioned_with_prometheus_jaeger_and_the_dashboards_folder():
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/oms.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["jaeger"]["type"] == "jaeger"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/oms.yml").read_text())
    [provider] = providers["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    prometheus = compose["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
