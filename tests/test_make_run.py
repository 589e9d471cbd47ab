"""`make run` supervises what it started: a service that dies is restarted with backoff while everything else keeps
running, and only a stop request stops it all (deploy/run.sh, on the test broker and database)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("order", "routing", "inventory", "notifications")

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Run:
    """deploy/run.sh started as `make run` starts it, with its state in a folder of its own."""

    def __init__(self, folder: Path, env: dict[str, str], ports: dict[str, int]) -> None:
        self.folder, self.env, self.ports = folder, env, ports
        self.output = folder / "run.out"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.output.open("w") as out:
            self.process = subprocess.Popen(
                [str(ROOT / "deploy" / "run.sh"), "start"], env=self.env, cwd=ROOT, stdout=out, stderr=out
            )

    def said(self) -> str:
        return self.output.read_text()

    def pid(self, name: str) -> int:
        return int((self.folder / f"{name}.pid").read_text())

    def ready(self, service: str) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports[service]}/readyz"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        subprocess.run([str(ROOT / "deploy" / "run.sh"), "stop"], env=self.env, cwd=ROOT, timeout=120, check=False)
        if self.process is not None:
            self.process.wait(timeout=60)


@pytest.fixture
def run(tmp_path: Path, service_database) -> Run:
    kafka, postgres = os.environ.get("OMS_TEST_KAFKA_BOOTSTRAP"), os.environ.get("OMS_TEST_POSTGRES_URL")
    if not (kafka and postgres):
        pytest.skip("needs the project's own broker and database (make test), which run.sh manages")
    ports = {service: free_port() for service in SERVICES}
    env = {
        **os.environ,
        "OMS_RUN_DIR": str(tmp_path),
        "OMS_KAFKA_PORT": str(urlsplit(f"//{kafka}").port),
        "OMS_PG_PORT": str(urlsplit(postgres).port),
        "OMS_DEMO": "0",
        "OMS_DEMO_SOURCES": "0",
        "OMS_NOTIFICATIONS_SMTP_PORT": str(free_port()),
        "OMS_RESTART_MAX_DELAY": "4",
    }
    for service in SERVICES:
        env[f"OMS_{service.upper()}_HTTP_PORT"] = str(ports[service])
        env[f"OMS_{service.upper()}_DATABASE_URL"] = service_database(service, "makerun")
    started = Run(tmp_path, env, ports)
    yield started
    started.stop()


def test_a_crashed_service_is_restarted_with_backoff_and_nothing_else_stops(run: Run):
    run.start()
    _wait(lambda: all(run.ready(s) for s in SERVICES) and "The OMS is running" in run.said(), "make run to be up")
    others = {name: run.pid(name) for name in ("routing", "inventory", "notifications", "mail")}

    first = run.pid("order")
    os.killpg(first, signal.SIGKILL)
    _wait(lambda: "order exited (status 137); restarting in 1 s (restart 1)" in run.said(), "the crash to be seen")
    _wait(lambda: run.pid("order") != first and run.ready("order"), "order to be restarted and ready")

    # It crashes again at once: the supervisor waits longer before the next start.
    second = run.pid("order")
    os.killpg(second, signal.SIGKILL)
    _wait(lambda: "restarting in 2 s (restart 2)" in run.said(), "the second crash to be seen")
    _wait(lambda: run.pid("order") != second and run.ready("order"), "order to be restarted again")

    assert {name: run.pid(name) for name in others} == others, "the other processes were restarted too"
    assert all(_alive(pid) for pid in others.values())
    assert run.process is not None and run.process.poll() is None, "make run itself stopped"

    # Only a stop request stops everything; the broker and database it found running stay up.
    pids = [run.pid(name) for name in (*SERVICES, "mail")]
    run.stop()
    assert run.process.returncode == 0, run.said()[-2000:]
    assert not any(_alive(pid) for pid in pids)
    assert re.search(r"oms: stopped", run.said())
    status = subprocess.run(
        [str(ROOT / "deploy" / "kafka" / "kafka.sh"), "status"], env=run.env, capture_output=True, check=False
    )
    assert status.returncode == 0, "the test broker was stopped by make run"
