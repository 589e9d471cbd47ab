"""The running system: the four services as separate processes on a real Kafka broker and real PostgreSQL, a real
SMTP server (aiosmtpd), and the test playing channel, WMS and 3PL with a real Kafka client.

The services start once per module (fresh databases, free ports, their own trace files) and stop after it. A module
may give its services more settings with a module-level `SYSTEM_ENV` dict (e.g. short stuck-order thresholds),
merged over the defaults below for every service."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.controller import Controller

from oms_contracts import CloudEvent
from oms_contracts.topics import INVENTORY_RECEIPTS
from oms_runtime.testing import groups_to_end
from oms_tools import samples

SERVICES = ("order", "routing", "inventory", "notifications")
TOKEN = "e2e-token"
LINK_KEY = "e2e-customer-link-key-of-at-least-32-bytes"
OPS_EMAIL = "ops@example.com"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.content.decode("utf-8")}
        )
        return "250 Message accepted for delivery"


@dataclass
class System:
    kafka: str
    ports: dict[str, int]
    trace_dir: Path
    log_dir: Path
    mailbox: Mailbox
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, service: str, *, name: str | None = None, **env: str) -> None:
        """Start the service; with a `name`, another process of it under that name (its log, its entry in
        `processes`, stopped with the others), with `env` over the service's settings (e.g. its own HTTP port)."""
        name = name or service
        log = (self.log_dir / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"oms_{service}"],
            env=self.environments[service] | env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, service: str) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed — a crash."""
        self.processes[service].kill()
        self.processes[service].wait(timeout=10)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    async def publish(
        self,
        topic: str,
        *messages: CloudEvent | bytes,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for message in messages:
                if isinstance(message, CloudEvent):
                    value, record_key = message.to_bytes(), (key or message.key()).encode()
                else:
                    value, record_key = message, key.encode() if key else None
                await producer.send_and_wait(topic, value, key=record_key, headers=headers)
        finally:
            await producer.stop()

    def consumer(self, *topics: str) -> AIOKafkaConsumer:
        """A consumer that reads these topics from the beginning, in a group of its own."""
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.kafka,
            group_id=f"e2e-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )

    def spans(self) -> list[dict]:
        found = []
        for path in self.trace_dir.glob("*.jsonl"):
            found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return found

    def log(self, service: str) -> str:
        return (self.log_dir / f"{service}.log").read_text()


# Deadlines, not measures: generous, because a shared 2-core machine may be busy with much else.
async def eventually(check, *, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll an async check until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


async def read_until(consumer: AIOKafkaConsumer, predicate, *, timeout: float = 60.0):
    """The first record the predicate accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                if predicate(record):
                    return record
    pytest.fail(f"no matching record on {consumer.subscription()} within {timeout}s")


async def _start_from_now(bootstrap: str) -> None:
    """Move the services' consumer groups to the end of their topics. The groups are the services' own, on topics
    the whole session shares: a module's system would otherwise take in what an earlier one left unread when it
    stopped (a fuzz run's paid orders backordered the next module's stock away in a fresh database)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        services = {f"oms-{service}" for service in SERVICES}
        groups = [g for g, *_ in await admin.list_consumer_groups() if g.split(".", 1)[0] in services]
    finally:
        await admin.close()
    # A group under the services' prefix that is not named after a topic (one an older or newer version made on a
    # broker kept between runs) has nothing here to move: groups_to_end passes over topics there are not.
    await groups_to_end(bootstrap, [(group, group.split(".", 1)[1]) for group in groups])


@pytest.fixture(scope="module")
def system(oms_topics: str, service_database, tmp_path_factory, request) -> Iterator[System]:
    # A module's own settings, e.g. thresholds it needs shorter than any default; other modules get the defaults.
    extra: dict[str, str] = getattr(request.module, "SYSTEM_ENV", {})
    label = uuid.uuid4().hex[:6]
    databases = {service: service_database(service, f"e2e{label}") for service in SERVICES}
    ports = {service: free_port() for service in SERVICES}
    trace_dir = tmp_path_factory.mktemp("traces")
    log_dir = tmp_path_factory.mktemp("logs")
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    running = System(oms_topics, ports, trace_dir, log_dir, mailbox)
    asyncio.run(_start_from_now(oms_topics))
    try:
        for service in SERVICES:
            running.environments[service] = {
                **os.environ,
                "OMS_KAFKA_BOOTSTRAP": oms_topics,
                f"OMS_{service.upper()}_DATABASE_URL": databases[service],
                f"OMS_{service.upper()}_HTTP_PORT": str(ports[service]),
                "OMS_API_TOKENS": json.dumps({TOKEN: "e2e-tester"}),
                "OMS_TRACE_FILE": str(trace_dir / f"{service}.jsonl"),
                "OMS_NOTIFICATIONS_SMTP_HOST": "127.0.0.1",
                "OMS_NOTIFICATIONS_SMTP_PORT": str(smtp.port),
                "OMS_LOG_LEVEL": "INFO",
                # The gauges behind /metrics (lag, outbox, orders by status, backorders) refresh every second.
                "OMS_METRICS_REFRESH_S": "1",
                # The order's single view asks inventory for the live queue position of backordered units.
                "OMS_ORDER_INVENTORY_URL": f"http://127.0.0.1:{ports['inventory']}",
                "OMS_ORDER_INVENTORY_TOKEN": TOKEN,
                # The backorder notice's wait-or-cancel link, signed by notifications and checked by the order service.
                "OMS_CUSTOMER_LINK_KEY": LINK_KEY,
                "OMS_NOTIFICATIONS_ORDER_PUBLIC_URL": f"http://127.0.0.1:{ports['order']}",
                "OMS_NOTIFICATIONS_OPS_EMAIL": OPS_EMAIL,
                **extra,
            }
            running.start(service)
        for service in SERVICES:
            wait_ready(running, service)
        yield running
    finally:
        for process in running.processes.values():
            process.terminate()
        for service, process in running.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                print(f"{service} did not stop within 30 s; killed")
        smtp.stop()
        for service in SERVICES:
            log = log_dir / f"{service}.log"
            if log.exists():
                print(f"---- {service} log (last 40 lines) ----")
                print("\n".join(log.read_text().splitlines()[-40:]))


def wait_ready(system: System, service: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if system.processes[service].poll() is not None:
            pytest.fail(f"{service} exited during start-up:\n{system.log(service)[-3000:]}")
        try:
            if httpx.get(system.url(service, "/readyz"), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{service} not ready after {timeout}s:\n{system.log(service)[-3000:]}")


NETWORK = {
    "sources": [
        {
            "code": "WH-EAST",
            "name": "Berlin warehouse",
            "type": "warehouse",
            "lat": 52.52,
            "lon": 13.40,
            "countries": ["DE", "AT", "PL"],
            "priority": 10,
            "cost_per_shipment": "4.50",
            "cost_per_unit": "0.20",
            "handling_days": 1,
        },
        {
            "code": "WH-WEST",
            "name": "Cologne warehouse",
            "type": "warehouse",
            "lat": 50.94,
            "lon": 6.96,
            "countries": ["DE", "NL", "BE"],
            "priority": 10,
            "cost_per_shipment": "4.50",
            "cost_per_unit": "0.20",
            "handling_days": 1,
        },
        {
            "code": "3PL-NL",
            "name": "Venlo 3PL",
            "type": "3pl",
            "lat": 51.37,
            "lon": 6.17,
            "countries": ["NL", "BE", "DE"],
            "priority": 20,
            "cost_per_shipment": "6.00",
            "cost_per_unit": "0.35",
            "handling_days": 2,
        },
    ]
}


@pytest.fixture(scope="module")
async def network(system: System) -> dict:
    """The demo network in routing and, through oms.routing.network.v1, in inventory; stock received at the
    warehouse and visible in routing's availability projection."""
    async with system.http() as http:
        response = await http.put(system.url("routing", "/network"), json=NETWORK)
        assert response.status_code == 200, response.text

        # Inventory learns the network from routing's topic; a receipt before that would rightly be refused.
        async def inventory_knows_the_network():
            r = await http.get(system.url("inventory", "/sources"))
            codes = {s["code"] for s in r.json() if s["active"]} if r.status_code == 200 else set()
            return codes >= {s["code"] for s in NETWORK["sources"]}

        await eventually(inventory_knows_the_network, what="inventory to know the network")
        await system.publish(
            INVENTORY_RECEIPTS.name,
            samples.stock_received("SKU-A", "WH-EAST", 10),
            samples.stock_received("SKU-B", "WH-EAST", 5),
            samples.stock_received("SKU-A", "3PL-NL", 3),
        )

        async def stocked():
            r = await http.get(system.url("inventory", "/stock/SKU-B"))
            return r.status_code == 200 and r.json()

        await eventually(stocked, what="inventory to receive the stock")

        probe = samples.order_submitted("probe", [("SKU-A", 2, "10.00"), ("SKU-B", 1, "5.00")])
        paid = {
            "order_id": str(probe.data.order_id),
            "channel": "web-eu",
            "placed_at": "2026-11-25T10:00:00Z",
            "currency": "EUR",
            "amount": str(probe.data.grand_total),
            "lines": [{"line_id": x.line_id, "sku": x.sku, "quantity": x.quantity} for x in probe.data.lines],
            "shipping_address": probe.data.shipping_address.model_dump(mode="json"),
            "shipping_method": "standard",
            "options": {"ship_complete": False, "backorder_policy": "allow"},
        }

        async def routable():
            r = await http.post(system.url("routing", "/simulate"), json=paid)
            return r.status_code == 200 and r.json()["shipments"] and r.json()["shipments"][0]["source_code"]

        assert await eventually(routable, what="routing to see the stock") == "WH-EAST"
    return NETWORK


def run_id() -> str:
    return uuid.uuid4().hex[:8]
