"""The Prometheus setup `make observe` and docker-compose.yml load (deploy/prometheus): its config and alert rules are
valid for Prometheus's own checker, and every alert fires, and only fires, as its unit tests say; among them a paid
order that nothing moves fires OMSOrderStuckPaid, and an episode of the order service's stuck check fires
OMSOrdersStuck.

promtool comes with Debian's prometheus package, which `make test` installs (deploy/prometheus/prometheus.sh
install); run alone, the fixture installs it the same way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    if shutil.which("promtool") is None:
        subprocess.run([str(HERE / "prometheus.sh"), "install"], check=True)
    return shutil.which("promtool") or pytest.fail("promtool not on PATH after deploy/prometheus/prometheus.sh install")


def _run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_prometheus_config_and_the_rule_files_it_loads_are_valid(promtool):
    out = _run(promtool, "check", "config", str(HERE / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out


def test_every_alert_rule_is_valid(promtool):
    out = _run(promtool, "check", "rules", *map(str, sorted((HERE / "rules").glob("*.yml"))))
    assert "SUCCESS" in out


def test_a_stuck_order_fires_its_alert_and_every_rule_fires_only_as_its_unit_tests_say(promtool):
    out = _run(promtool, "test", "rules", *map(str, sorted((HERE / "tests").glob("*.yml"))))
    assert "SUCCESS" in out
    tested = (HERE / "tests" / "oms.test.yml").read_text()
    # Each kind of alert the issue names has a unit test: stuck orders, DLQ growth, lag, outbox age, backorder age,
    # error rates.
    for alert in (
        "OMSOrdersStuck",
        "OMSOrderStuckPaid",
        "OMSDeadLetters",
        "OMSConsumerLag",
        "OMSOutboxBehind",
        "OMSBackorderWaitingLong",
        "OMSConsumerErrors",
        "OMSOffsetCommitsFailing",
        "OMSHTTPErrors",
    ):
        assert f"alertname: {alert}" in tested, alert
