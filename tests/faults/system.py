"""The system the fault suite breaks: a broker and a PostgreSQL server of its own (deploy/kafka, deploy/postgres, on
the suite's ports, state under .cache/faults/state), the four services as processes under a supervisor of the
suite's own, and an SMTP sink that keeps every mail.

Its own broker and database because the suite kills and restarts them: the session's test infrastructure, or a
`make run`, must never be what it kills. Ports: Kafka 20292 (controller 20293), PostgreSQL 16332, services
18181-18184 (a second instance of each, for rebalances, on a free port), SMTP 18125."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

import bench.system

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("order", "routing", "inventory", "notifications")
TOKEN = "faults-token"
OPS_EMAIL = "ops@faults.example"


@dataclass(frozen=True)
class Ports(bench.system.Ports):
    """The bench's set of ports with the suite's own numbers (both may run beside `make test`), and the KRaft
    controller's, which the broker's kill and restart need."""

    kafka: int = 20292
    postgres: int = 16332
    order: int = 18181
    routing: int = 18182
    inventory: int = 18183
    notifications: int = 18184
    smtp: int = 18125
    controller: int = 20293


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 600) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}  ({time.strftime('%H:%M:%S')})\n")
        out.flush()
        result = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")


class Infra:
    """The suite's broker and database server, started by the project's own scripts in a state directory of the
    suite's (reset at every start, so a broker left behind by an interrupted run is stopped first, not reused)."""

    def __init__(self, state: Path, ports: Ports, log: Path) -> None:
        self.state = state
        self.ports = ports
        self.log = log

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OMS_KAFKA_PORT": str(self.ports.kafka),
            "OMS_KAFKA_CONTROLLER_PORT": str(self.ports.controller),
            "OMS_KAFKA_STATE": str(self.state / "kafka"),
            "OMS_PG_PORT": str(self.ports.postgres),
            "OMS_PG_STATE": str(self.state / "postgres"),
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    def database_url(self, service: str) -> str:
        return f"postgresql+asyncpg://oms:oms@127.0.0.1:{self.ports.postgres}/oms_{service}"

    def pg_url(self, service: str) -> str:
        return f"postgresql://oms:oms@127.0.0.1:{self.ports.postgres}/oms_{service}"

    def _run(self, script: str, command: str, timeout: float = 600) -> None:
        _script([str(ROOT / "deploy" / script), command], self.env(), self.log, timeout)

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self._run("kafka/kafka.sh", "reset")
        self._run("postgres/postgres.sh", "reset")
        # Side by side: the broker takes its time on a busy machine, and PostgreSQL need not wait for it.
        database = threading.Thread(target=self._run, args=("postgres/postgres.sh", "start"))
        database.start()
        try:
            self.start_broker()
        finally:
            database.join()
        self._run("postgres/postgres.sh", "status")

    def start_broker(self) -> None:
        self._run("kafka/kafka.sh", "start")

    def broker_pid(self) -> int | None:
        try:
            return int((self.state / "kafka" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def kill_broker(self) -> None:
        """kill -9 of the broker: no controlled shutdown, no flush; the log is recovered at the next start."""
        pid = self.broker_pid()
        if pid is None:
            raise RuntimeError("no broker pid to kill")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"broker {pid} still alive 30 s after SIGKILL")

    def restart_postgres_immediately(self) -> None:
        self._run("postgres/postgres.sh", "restart-immediate")

    def stop(self) -> None:
        for script in ("kafka/kafka.sh", "postgres/postgres.sh"):
            try:
                self._run(script, "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"faults: {error}")


def migrate(infra: Infra, service: str, log: Path) -> None:
    env = {**os.environ, f"OMS_{service.upper()}_DATABASE_URL": infra.database_url(service)}
    ini = ROOT / "services" / service / "alembic.ini"
    _script([sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"], env, log)


@dataclass
class Exit:
    """A service process that ended: when, how, and whether the suite meant it."""

    instance: str
    at: float
    status: int
    meant: str | None  # the fault that ended it ("kill9", "term", "stop"); None when nobody asked
    crash_point: str | None  # the crash point it says it died at (OMS_FAULT_CRASH_AT)

    @property
    def expected(self) -> bool:
        return self.meant is not None or self.crash_point is not None


@dataclass
class Instance:
    name: str  # "order", or "order#2" for a second instance
    service: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None
    wanted: bool = True
    # Set by whoever ends the process on purpose, read when the supervisor sees it gone.
    meant: str | None = None
    # OMS_FAULT_CRASH_AT for the next start only: a crash point fires once, then the service runs unarmed.
    arm_next: str | None = None
    armed: str | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    _log_offset: int = 0

    def start(self) -> None:
        env = dict(self.env)
        self.armed, self.arm_next = self.arm_next, None
        if self.armed:
            env["OMS_FAULT_CRASH_AT"] = self.armed
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        out = self.log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"oms_{self.service}"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        self.started_at = time.time()
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def said_since_start(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Services:
    """The four services as processes, restarted by a supervisor half a second after they exit (as `make run`
    restarts them, without its growing backoff: the suite wants to measure recovery, not wait for a timer)."""

    RESTART_DELAY = 0.5

    def __init__(self, infra: Infra, ports: Ports, log_dir: Path) -> None:
        self.infra = infra
        self.ports = ports
        self.log_dir = log_dir
        self.instances: dict[str, Instance] = {}
        self.exits: list[Exit] = []
        self._supervisor: asyncio.Task[None] | None = None

    def environment(self, service: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_", "OTEL_"))}
        env.update(
            {
                "OMS_KAFKA_BOOTSTRAP": self.infra.bootstrap,
                f"OMS_{service.upper()}_DATABASE_URL": self.infra.database_url(service),
                f"OMS_{service.upper()}_HTTP_PORT": str(port),
                "OMS_API_TOKENS": json.dumps({TOKEN: "faults"}),
                "OMS_NOTIFICATIONS_SMTP_HOST": "127.0.0.1",
                "OMS_NOTIFICATIONS_SMTP_PORT": str(self.ports.smtp),
                "OMS_NOTIFICATIONS_OPS_EMAIL": OPS_EMAIL,
                "OMS_ORDER_INVENTORY_URL": f"http://127.0.0.1:{self.ports.inventory}",
                "OMS_LOG_LEVEL": "INFO",
            }
        )
        return env

    def add(self, service: str, *, second: bool = False) -> Instance:
        name = f"{service}#2" if second else service
        port = free_port() if second else self.ports.http(service)
        instance = Instance(
            name, service, port, self.environment(service, port), self.log_dir / f"{name.replace('#', '-')}.log"
        )
        self.instances[name] = instance
        instance.start()
        return instance

    def primary(self, service: str) -> Instance:
        return self.instances[service]

    async def ready(self, instance: Instance) -> bool:
        if not instance.alive():
            return False
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                return (await http.get(instance.url("/readyz"))).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_ready(self, instances: list[Instance] | None = None, timeout: float = 180.0) -> float:
        """Until every instance answers /readyz with 200; returns when. Fails after `timeout` seconds."""
        instances = instances or [i for i in self.instances.values() if i.wanted]
        deadline = time.monotonic() + timeout
        while True:
            states = [await self.ready(i) for i in instances]
            if all(states):
                return time.time()
            if time.monotonic() > deadline:
                late = [i.name for i, ok in zip(instances, states, strict=True) if not ok]
                raise TimeoutError(f"not ready after {timeout:.0f} s: {', '.join(late)}")
            await asyncio.sleep(0.25)

    def start_supervising(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="faults-supervisor")

    async def _supervise(self) -> None:
        while True:
            now = time.time()
            for instance in list(self.instances.values()):
                if instance.process is None or instance.alive():
                    continue
                if instance.restart_at is None:
                    said = instance.said_since_start()
                    point = None
                    if instance.process.returncode == 137 and "oms-fault: crash at " in said:
                        point = said.split("oms-fault: crash at ", 1)[1].split()[0]
                    self.exits.append(Exit(instance.name, now, instance.process.returncode, instance.meant, point))
                    instance.meant = None
                    if not instance.wanted:
                        instance.process = None
                        continue
                    instance.restart_at = now + self.RESTART_DELAY
                elif now >= instance.restart_at and instance.wanted:
                    instance.start()
            await asyncio.sleep(0.1)

    def signal(self, instance: Instance, sig: signal.Signals, meant: str) -> float:
        """Send `sig` to an instance on purpose; returns when. The supervisor restarts it once it is gone (unless it
        is no longer wanted)."""
        assert instance.process is not None and instance.alive(), f"{instance.name} is not running"
        instance.meant = meant
        instance.process.send_signal(sig)
        return time.time()

    async def gone(self, instance: Instance, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while instance.alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{instance.name} still running {timeout:.0f} s after it was told to stop")
            await asyncio.sleep(0.1)

    async def stop_all(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for instance in self.instances.values():
            instance.wanted = False
            if instance.alive():
                instance.process.terminate()
        for instance in self.instances.values():
            if instance.process is None:
                continue
            try:
                await asyncio.to_thread(instance.process.wait, 60)
            except subprocess.TimeoutExpired:
                instance.process.kill()


@dataclass
class Mail:
    message_id: str
    order_id: str | None
    subject: str
    to: list[str]
    at: float


class MailSink:
    """The SMTP sink (tests/faults/mailsink.py) as a process of its own, and the mails it has taken so far."""

    def __init__(self, port: int, path: Path, log: Path) -> None:
        self.port = port
        self.path = path
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.mailsink", "--port", str(self.port), "--out", str(self.path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
        out.close()
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the mail sink did not start; see {self.log}")

    def mails(self) -> list[Mail]:
        if not self.path.exists():
            return []
        return [Mail(**json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
