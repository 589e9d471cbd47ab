"""The system under test, on ports and state of its own: a fresh Kafka broker and PostgreSQL server (deploy/kafka,
deploy/postgres) under the bench's run directory, and the four services started by deploy/run.sh exactly as
`make run` starts them (its migrations, topics, demo network, mail catcher, and the services' normal settings), with
the bench's catalogue and stock, and without the demo sources: the bench plays the sources itself.

Nothing here touches `make run`'s ports (9092, 5432, 8081-8084, 1025) or the tests' (19092, 15432)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import orders, procstat

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("order", "routing", "inventory", "notifications")
TOKEN = "demo-cs-token"  # run.sh's local demo token; only ever sent to the bench's own services on 127.0.0.1


@dataclass(frozen=True)
class Ports:
    kafka: int = 20092
    postgres: int = 16132
    order: int = 18081
    routing: int = 18082
    inventory: int = 18083
    notifications: int = 18084
    smtp: int = 18025

    def http(self, service: str) -> int:
        return getattr(self, service)


def uv() -> str:
    return os.environ.get("UV") or shutil.which("uv") or str(Path.home() / ".local/bin/uv")


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as out:
        result = subprocess.run(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")


class Infra:
    """A broker and a database server of the bench's own, in `root` (deleted by `stop(remove=True)`)."""

    def __init__(self, root: Path, ports: Ports) -> None:
        self.root = root
        self.ports = ports
        self.log = root / "infra.log"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "OMS_KAFKA_PORT": str(self.ports.kafka),
            "OMS_KAFKA_STATE": str(self.root / "kafka"),
            "OMS_PG_PORT": str(self.ports.postgres),
            "OMS_PG_STATE": str(self.root / "postgres"),
        }
        return env

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    def pg_url(self, database: str = "postgres") -> str:
        return f"postgresql://oms:oms@127.0.0.1:{self.ports.postgres}/{database}"

    async def analyze(self) -> None:
        """ANALYZE every service's database, as autovacuum has on any database that has run a while. A fresh one has
        no statistics until autovacuum's first pass over it, a minute or more into the load, and PostgreSQL plans the
        services' reads as if their tables were small: the order service's load read all of `order_lines`,
        `fulfillments` and `parcels` for every batch (docs/performance.md, step 32)."""
        for service in SERVICES:
            conn = await asyncpg.connect(self.pg_url(f"oms_{service}"))
            try:
                await conn.execute("ANALYZE")
            finally:
                await conn.close()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _run([str(REPO / "deploy/kafka/kafka.sh"), "start"], self.env(), self.log)
        _run([str(REPO / "deploy/postgres/postgres.sh"), "start"], self.env(), self.log)

    def stop(self, *, remove: bool) -> None:
        for script in ("deploy/kafka/kafka.sh", "deploy/postgres/postgres.sh"):
            try:
                _run([str(REPO / script), "stop"], self.env(), self.log)
            except RuntimeError as error:
                print(f"bench: {error}")
        if remove:
            shutil.rmtree(self.root / "kafka", ignore_errors=True)
            shutil.rmtree(self.root / "postgres", ignore_errors=True)

    def kafka_pid(self) -> int | None:
        return procstat.pid_from(self.root / "kafka" / "kafka.pid")

    def postgres_pid(self) -> int | None:
        return procstat.pid_from(self.root / "postgres" / "data" / "postmaster.pid")


@functools.cache
def mail_catcher() -> str:
    """The mail catcher run.sh starts for the bench. It stands in for the merchant's mail relay, off the box in
    production, so it should take as little of the box as it can: Postfix's smtp-sink (deploy/mail/smtp-sink.sh), a
    C server that accepts each mail and keeps nothing, at an eighth of a Python catcher's CPU per mail; aiosmtpd's
    Sink where Debian's package cannot be had."""
    fetched = subprocess.run(
        [str(REPO / "deploy/mail/smtp-sink.sh"), "fetch"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if fetched.returncode == 0:
        return "smtp-sink"
    why = fetched.stderr.strip().splitlines()[-1:] or [f"exit {fetched.returncode}"]
    print(f"bench: {why[0]}; the mail catcher is aiosmtpd's Sink instead of smtp-sink (more CPU per mail)")
    return "aiosmtpd.handlers.Sink"


class Services:
    """deploy/run.sh in the background, with the bench's environment; stopped with SIGTERM as `make stop` does."""

    def __init__(self, infra: Infra, run_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.infra = infra
        self.run_dir = run_dir
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.log = run_dir / "run.sh.log"

    def env(self) -> dict[str, str]:
        p = self.infra.ports
        env = {
            **self.infra.env(),
            "UV": uv(),
            "OMS_RUN_DIR": str(self.run_dir),
            "OMS_DEMO": "1",
            "OMS_DEMO_DIR": str(self.run_dir / "demo"),
            "OMS_DEMO_SOURCES": "0",
            "OMS_NOTIFICATIONS_SMTP_PORT": str(p.smtp),
            "OMS_MAIL_CATCHER": mail_catcher(),
            **{f"OMS_{s.upper()}_HTTP_PORT": str(p.http(s)) for s in SERVICES},
            **self.extra_env,
        }
        # The services' own settings are the defaults run.sh gives them; a caller's OMS_ tuning must not leak in.
        for name in list(env):
            tuning = name.startswith(("OMS_BATCH", "OMS_DB_POOL", "OMS_GC", "OTEL_TRACES_SAMPLER"))
            if tuning and name not in self.extra_env:
                del env[name]
        return env

    def start(self, timeout: float = 240.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        orders.write_demo_dir(self.run_dir / "demo")
        out = self.log.open("a")
        self.process = subprocess.Popen(
            [str(REPO / "deploy/run.sh"), "start"],
            env=self.env(),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while "The OMS is running" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"deploy/run.sh exited ({self.process.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the services were not up within {timeout:.0f} s; see {self.log}")
            time.sleep(0.5)
        self._wait_stock(deadline)

    def _wait_stock(self, deadline: float) -> None:
        """Until inventory holds the last SKU's stock at every stocking source (it applies receipts in order)."""
        url = f"http://127.0.0.1:{self.infra.ports.inventory}/stock/{orders.sku(orders.SKUS - 1)}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = response.read().decode()
                if all(code in body for code in orders.STOCKED_AT):
                    # Routing learns availability from inventory's stock levels, a hop later.
                    time.sleep(3)
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("inventory did not receive the bench's stock in time")
            time.sleep(1)

    def pids(self) -> dict[str, int | None]:
        return {name: procstat.pid_from(self.run_dir / f"{name}.pid") for name in (*SERVICES, "mail")}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def request_topics(self) -> list[str]:
        network = json.loads((self.run_dir / "demo" / "network.json").read_text())
        return [f"oms.fulfillment.requests.{s['code']}.v1" for s in network["sources"]]
